"""The top of the kernel library: put a plain model on the kernels, and take it off again, by
swapping its modules for the fused equivalents, once, up front (as ``ipex.optimize`` and
``torch.ao.quantization.fuse_modules`` do). A swapped module keeps its parameters, buffers,
hooks and checkpoint keys; it only changes class (and a ReLU after a fused BatchNorm becomes an
identity), and remembers the class it had, so ``use_stock_kernels`` gives the model back as it
was, module for module.
"""

from torch import nn

from models.kernels.blocks import ConvBNReLU3d, FusedMultiFiberUnit, PreActConv3d
from models.kernels.modules import (
    PACKED,
    STOCK_CLASS,
    BatchNormReLU3d,
    FiberConv3d,
    FusedReLU,
    MaxPool3d,
    OneDNNPointwiseConv3d,
    PointwiseConv3d,
)
from models.kernels.support import EVAL_AFFINE

# block classes the library fuses as a whole, registered by whoever defines them
# (``register_block``): the plain class -> its fused equivalent
_BLOCKS: dict[type, type] = {}


def register_block(plain: type, fused: type = FusedMultiFiberUnit) -> None:
    """Fuse every ``plain`` module as a whole where a model is optimized, as ``fused`` (one of
    ``blocks.py``'s, whose layout and wiring the plain block must have: its docstring says
    which; the swap is checked against the plain block by the tests of whoever registers it)."""
    _BLOCKS[plain] = fused


def optimize(model: nn.Module) -> nn.Module:
    """``model`` on the suite's kernels, in place (and returned): every grouped (1 or 3, 3, 3)
    ``Conv3d`` with same padding and no bias a ``FiberConv3d``, and in a model with such convs
    everything ``fuse`` fuses. A model without them (Res3D, I3D) stays wholly on PyTorch's
    kernels, so beside MF-Net it is a control. Where a call does not suit the kernels, each
    module runs as the one it replaced."""
    for module in model.modules():
        if _is_fiber_conv(module):
            _swap(module, FiberConv3d)
    if any(isinstance(m, FiberConv3d) for m in model.modules()):
        fuse(model)
    return model


def applies(model: nn.Module) -> bool:
    """Whether ``optimize`` puts any of ``model`` on the kernels (a grouped (1 or 3, 3, 3) conv
    with same padding and no bias, or one already swapped): where it does not, the suite's
    kernels and PyTorch's are the same model."""
    return any(_is_fiber_conv(m) or isinstance(m, FiberConv3d) for m in model.modules())


def fuse(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm3d`` followed by a ``ReLU`` in an ``nn.Sequential`` of ``model`` as one
    op, every pre-activation conv (BatchNorm, ReLU, then a fiber or 1x1x1 conv) a
    ``PreActConv3d``, every conv followed by a BatchNorm + ReLU a ``ConvBNReLU3d``, every
    ``MaxPool3d`` the library's, and every registered block fused; in place (and returned)."""
    for seq, first, second in _pairs(model):
        bn, relu = seq._modules[first], seq._modules[second]
        if type(bn) is nn.BatchNorm3d and type(relu) is nn.ReLU:
            _swap(bn, BatchNormReLU3d)
            seq._modules[second] = FusedReLU(relu.inplace)
    for seq in [m for m in model.modules() if _is_pre_activation(m)]:
        conv = list(seq._modules.values())[2]
        if not isinstance(conv, FiberConv3d):
            _swap(conv, PointwiseConv3d)
        _swap(seq, PreActConv3d)
    for seq in [m for m in model.modules() if _is_post_activation(m)]:
        _swap(seq, ConvBNReLU3d)
    for pool in [m for m in model.modules() if type(m) is nn.MaxPool3d]:
        _swap(pool, MaxPool3d)
    for block in [m for m in model.modules() if type(m) in _BLOCKS]:
        if all(isinstance(child, PreActConv3d) for child in block.children()):
            _swap(block, _BLOCKS[type(block)])
    return model


def use_stock_kernels(model: nn.Module) -> nn.Module:
    """Undo ``optimize``, in place (and returned): every module back to the class it had, and
    each ``FusedReLU`` a ``ReLU`` again. MF-Net as footnote 5 found it, the harness's stock
    condition (``run.py --fiber-kernel stock``)."""
    for module in model.modules():
        if STOCK_CLASS in module.__dict__:
            module.__class__ = module.__dict__.pop(STOCK_CLASS)
            for cache in (PACKED, EVAL_AFFINE):
                module.__dict__.pop(cache, None)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for name, child in seq._modules.items():
            if type(child) is FusedReLU:
                seq._modules[name] = nn.ReLU(child.inplace)
    return model


def use_kernels(model: nn.Module, suite: bool) -> nn.Module:
    """``optimize(model)`` where ``suite``, else ``use_stock_kernels(model)``: a run's kernels condition."""
    return optimize(model) if suite else use_stock_kernels(model)


def pin_pointwise_to_onednn(model: nn.Module) -> nn.Module:
    """Every plain 1x1x1 ``Conv3d`` of ``model`` an ``OneDNNPointwiseConv3d``, in place: PyTorch's
    own kernels, kept on oneDNN at batch 1 (a stock-kernel choice, which ``use_stock_kernels``
    keeps)."""
    for module in model.modules():
        if type(module) is nn.Conv3d and module.kernel_size == (1, 1, 1):
            module.__class__ = OneDNNPointwiseConv3d
    return model


def _swap(module: nn.Module, fused: type) -> None:
    if type(module) is not fused:
        module.__dict__.setdefault(STOCK_CLASS, type(module))
        module.__class__ = fused


def _is_fiber_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv3d and module.groups > 1 and module.bias is None
            and module.kernel_size[1:] == (3, 3) and module.kernel_size[0] in (1, 3)
            and module.padding == (module.kernel_size[0] // 2, 1, 1))


def _is_pointwise_conv(module: nn.Module) -> bool:
    return (type(module) in (nn.Conv3d, OneDNNPointwiseConv3d, PointwiseConv3d)
            and module.kernel_size == (1, 1, 1) and module.padding == (0, 0, 0)
            and module.groups == 1 and module.bias is None)


def _is_pre_activation(module: nn.Module) -> bool:
    """A Sequential of a fused BatchNorm + ReLU and a fiber or pointwise conv (MF-Net's
    ``BNReLUConv``), not swapped yet."""
    if not isinstance(module, nn.Sequential) or isinstance(module, PreActConv3d) or len(module) != 3:
        return False
    bn, relu, conv = module._modules.values()
    return (type(bn) is BatchNormReLU3d and type(relu) is FusedReLU
            and (type(conv) is FiberConv3d or _is_pointwise_conv(conv)))


def _is_post_activation(module: nn.Module) -> bool:
    """A plain Sequential of a plain ``Conv3d`` and a fused BatchNorm + ReLU (MF-Net's stem)."""
    if type(module) is not nn.Sequential or len(module) != 3:
        return False
    conv, bn, relu = module._modules.values()
    return type(conv) is nn.Conv3d and type(bn) is BatchNormReLU3d and type(relu) is FusedReLU


def _pairs(model: nn.Module):
    """(Sequential, name, next name) for every two neighbours in ``model``'s Sequentials: only a
    Sequential's order is the order its children run in, so only there is a pair certain."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        yield from ((seq, first, second) for first, second in zip(names, names[1:]))
