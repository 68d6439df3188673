"""MF-Net's pre-activation pointwise convs on the suite's kernel: in one pass in inference, and
as a conv with its own backward in training.

Every 1x1x1 conv of MF-Net follows a BatchNorm and a ReLU (``BNReLUConv``), and the
multiplexer's second conv, like a stage's first unit's last, is followed by a residual add. Run
as PyTorch runs them, that is three passes over memory; at MF-Net's first two stages these convs
move more bytes than they do multiply-adds, so the passes, not the FMAs, set their time. Here
``relu(x * scale + shift)`` is applied as each block of pixels is read, and the residual added as
each output pixel is written (``models/csrc/pointwise_cl.cpp``). ``docs/fiber-kernel.md`` has
the measured effect.

Where: inference (no gradient) on the CPU, an fp32 channels-last input, an eval-mode BatchNorm
that the suite's kernels run (``BatchNormReLU3d``, which ``fiber_kernel.use_kernel`` puts in:
the harness's "suite" condition), a 1x1x1 conv without bias or groups at any stride (a strided
one, MF-Net's shortcut projections ``conv_w1``, reads only the pixels it keeps), no hook that
would miss a call, and a channels-last path of the kernel: AVX2 (24 output channels a register
block) or AVX-512 (48), the weight packed for the path that runs. Elsewhere ``BNReLUConv`` runs
its three modules.

A unit's multiplexer, ``x + conv_i2(conv_i1(x))`` (x's channels to a quarter of the unit's
middle width and back), goes one step further in inference (``multiplexes``,
``forward_multiplexed``): each block of pixels runs through both convs with the middle left in the
task's buffer, and x's block, read for the first conv, is added back from cache. That is one pass
over x and one over the output, where the two ops read x twice and write and read the middle.

In training (gradients wanted) the BatchNorm uses the batch's statistics, which are not known
until the input has been read, so BatchNorm + ReLU stay one op of their own (``bn_relu.py``) and
only the conv (and the residual add) runs here (``trains``, ``conv_trained``): forward and the
input's gradient on the same kernel (the input's gradient is the conv with the transposed
weight), the weight's gradient as a sum of outer products over the pixels on the path's vectors
(``grad_weight_pointwise``; on the AVX2 path, MKL's GEMM). Run as PyTorch runs it, oneDNN's
backward of a spatially strided 1x1x1 conv (the shortcut projections) took 2-3x the
forward's time here; this reads only the pixels the conv keeps.
"""

import torch
from torch import nn

from models import fiber_kernel
from models.bn_relu import BatchNormReLU3d, batch_affine

PROFILED_AS = "suite::pointwise"  # as torch.profiler's tables name the fused op
MULTIPLEXER_PROFILED_AS = "suite::multiplexer"  # the multiplexer's two convs in one op
PACKED = "_suite_pointwise_pack"  # the packed weight, kept on the conv (no checkpoint key)


def folds(bn: nn.Module, relu: nn.Module, conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv(relu(bn(x)))`` runs as one fused op here (see the module docstring)."""
    return _folds_modules(bn, relu, conv) and _kernel_input(conv, x)


def _folds_modules(bn: nn.Module, relu: nn.Module, conv: nn.Module) -> bool:
    if not (isinstance(bn, BatchNormReLU3d) and not bn.training and bn.running_mean is not None
            and _kernel_conv(conv)):
        return False
    return not (torch.is_grad_enabled() or fiber_kernel.traced()
                or torch.is_autocast_enabled("cpu") or fiber_kernel.hooked(bn, relu, conv))


def multiplexes(first: nn.Module, second: nn.Module, x: torch.Tensor) -> bool:
    """Whether MF-Net's multiplexer, ``x + second(first(x))`` (two ``BNReLUConv`` 1x1x1 convs,
    ``x``'s channels to a few and back), runs as one op here (``forward_multiplexed``): where each
    conv would fold on its own, both at stride 1, and no hook is on either ``BNReLUConv`` (the op
    calls neither)."""
    return (not fiber_kernel.hooked(first, second)
            and _folds_modules(first.bn, first.relu, first.conv)
            and _folds_modules(second.bn, second.relu, second.conv)
            and first.conv.stride == second.conv.stride == (1, 1, 1)
            and second.conv.in_channels == first.conv.out_channels
            and second.conv.out_channels == first.conv.in_channels
            and _kernel_input(first.conv, x))


def trains(bn: nn.Module, conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``conv(relu(bn(x)))`` runs its conv on ``conv_trained`` here: gradients wanted, the
    suite's kernels (``bn`` a ``BatchNormReLU3d``), and the conv and input ``folds`` asks for."""
    return (torch.is_grad_enabled() and isinstance(bn, BatchNormReLU3d) and _kernel_conv(conv)
            and not (fiber_kernel.traced() or torch.is_autocast_enabled("cpu")
                     or fiber_kernel.hooked(conv))
            and _kernel_input(conv, x))


def _kernel_conv(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1)
            and conv.padding == (0, 0, 0) and conv.groups == 1
            and conv.bias is None and conv.weight.dtype == torch.float32)


def _kernel_input(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5
            and x.shape[1] == conv.in_channels and x.numel() > 0
            and x.is_contiguous(memory_format=torch.channels_last_3d)):
        return False
    return fiber_kernel.extension() is not None and fiber_kernel.path() in fiber_kernel.CL_PATHS


def residual_fits(conv: nn.Conv3d, x: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether ``residual`` can be added inside ``conv``'s fused op (this module's, or a fiber
    conv's): fp32, channels last, the shape of ``conv(x)``. Else the caller adds it after, and
    PyTorch's add says what does not fit."""
    out = [(d + 2 * p - k) // s + 1 for d, p, k, s in
           zip(x.shape[2:], conv.padding, conv.kernel_size, conv.stride)]
    return (residual.dtype == torch.float32 and residual.device == x.device
            and tuple(residual.shape) == (x.shape[0], conv.out_channels, *out)
            and residual.is_contiguous(memory_format=torch.channels_last_3d))


def _packed(conv: nn.Conv3d, path: str) -> torch.Tensor:
    """``conv``'s weight packed for the kernel's ``path``, kept on the conv until the weight (or
    the path) changes."""
    weight = conv.weight
    return fiber_kernel.kept(conv, PACKED, (weight.data_ptr(), weight._version, path),
                             lambda: fiber_kernel.extension().pack_pointwise(weight.detach(), path))


def forward_multiplexed(first: nn.Module, second: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + second(first(x))`` in one pass over ``x`` and one over the output: each block of
    pixels goes through both convs (the middle, 24-192 channels, stays in the task's buffer),
    and ``x``'s block is added back from cache. Only where ``multiplexes`` says so."""
    path = fiber_kernel.path()
    with torch.profiler.record_function(MULTIPLEXER_PROFILED_AS):
        return fiber_kernel.extension().multiplexer_cl(
            x, _packed(first.conv, path), first.conv.out_channels,
            *fiber_kernel.eval_affine(first.bn), _packed(second.conv, path),
            *fiber_kernel.eval_affine(second.bn), path)


def forward_folded(bn: nn.BatchNorm3d, conv: nn.Conv3d, x: torch.Tensor,
                   residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(relu(bn(x))) (+ residual)`` in one pass; only where ``folds`` (and, with a
    residual, ``residual_fits``) says so."""
    scale, shift = fiber_kernel.eval_affine(bn)
    path = fiber_kernel.path()
    with torch.profiler.record_function(PROFILED_AS):
        return fiber_kernel.extension().pointwise_cl(x, _packed(conv, path), conv.out_channels,
                                                     list(conv.stride), scale, shift, residual,
                                                     path=path)


class PointwiseFunction(torch.autograd.Function):
    """``conv3d(a, weight, stride) (+ residual)`` for a 1x1x1 conv, channels last, on the kernel:
    forward and the input's gradient (``_input_gradient``), and the weight's gradient
    ``gradᵀ · a`` over the kept pixels (``_weight_gradient``)."""

    @staticmethod
    def forward(ctx, a, weight, stride, residual=None):
        ctx.save_for_backward(a, weight)
        ctx.stride, ctx.path = stride, fiber_kernel.path()
        ext = fiber_kernel.extension()
        with torch.profiler.record_function(PROFILED_AS):
            return ext.pointwise_cl(a, ext.pack_pointwise(weight.detach(), ctx.path), weight.shape[0],
                                    list(stride), None, None, residual, path=ctx.path)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_a = _input_gradient(grad, a, weight, ctx.stride, ctx.path)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_gradient(a, grad, ctx.stride, ctx.path)
        grad_residual = grad if ctx.needs_input_grad[3] else None
        return grad_a, grad_w, None, grad_residual


class BNReLUPointwiseFunction(torch.autograd.Function):
    """``conv3d(relu(x * scale + shift), weight, stride) (+ residual)``: training's BatchNorm +
    ReLU (the batch's ``mean`` and ``invstd``, ``scale = bn_weight * invstd``, ``shift = bn_bias
    - mean * scale``) folded into the 1x1x1 conv on the kernel. The activated input is made a
    block of pixels at a time in the forward and again in the weight's gradient, never written
    out: one pass over x fewer (and one activation-sized tensor fewer kept) than BatchNorm + ReLU
    as an op of its own. The backward: every gradient in two passes over the pixels
    (``bn_pointwise_backward``). ``shared``: ``x`` also returned that many times, their gradients
    added to x's as it is written (``BatchNormReLUFunction``)."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, mean, invstd, weight, stride, residual, shared):
        scale, shift = batch_affine(bn_weight, bn_bias, mean, invstd)
        ctx.save_for_backward(x, mean, invstd, scale, shift, weight)
        ctx.stride, ctx.path = stride, fiber_kernel.path()
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ext = fiber_kernel.extension()
        with torch.profiler.record_function(PROFILED_AS):
            y = ext.pointwise_cl(x, ext.pack_pointwise(weight.detach(), ctx.path), weight.shape[0],
                                 list(stride), scale, shift, residual, path=ctx.path)
        return (y, *[x] * shared) if shared else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, *shared_grads):
        x, mean, invstd, scale, shift, weight = ctx.saved_tensors
        channels_last = torch.channels_last_3d
        grad = (torch.zeros(_output_shape(x, weight, ctx.stride), memory_format=channels_last)
                if grad is None else grad.contiguous(memory_format=channels_last))
        ext, path = fiber_kernel.extension(), ctx.path
        grad_w = grad_x = grad_bn_weight = grad_bn_bias = None
        plus = [g.contiguous(memory_format=channels_last) for g in shared_grads if g is not None]
        fused_w = ctx.needs_input_grad[5] and path != "avx2"  # there MKL's GEMM (_weight_gradient)
        if any(ctx.needs_input_grad[:3]):  # every gradient in two passes over the pixels
            grad_x, grad_bn_weight, grad_bn_bias, fused = ext.bn_pointwise_backward(
                grad, x, ext.pack_pointwise(weight.detach(), path, transposed=True), mean, invstd,
                scale, shift, plus, list(ctx.stride), path, fused_w)
            if fused_w:
                grad_w = fused
        if ctx.needs_input_grad[5] and grad_w is None:
            grad_w = _weight_gradient(x, grad, ctx.stride, path, scale, shift)
        grad_residual = grad if ctx.needs_input_grad[7] else None
        return grad_x, grad_bn_weight, grad_bn_bias, None, None, grad_w, None, grad_residual, None


def _output_shape(x: torch.Tensor, weight: torch.Tensor, stride) -> tuple[int, ...]:
    return (x.shape[0], weight.shape[0], *[(d - 1) // s + 1 for d, s in zip(x.shape[2:], stride)])


def _input_gradient(grad, a, weight, stride, path: str) -> torch.Tensor:
    """The conv's input gradient ``grad · weight``: the kernel with the transposed weight,
    scattered back to the kept pixels where the conv is strided (zeros elsewhere)."""
    ext = fiber_kernel.extension()
    packed_t = ext.pack_pointwise(weight.detach(), path, transposed=True)
    grad_kept = ext.pointwise_cl(grad, packed_t, weight.shape[1], [1, 1, 1], None, None, None, path=path)
    if tuple(stride) == (1, 1, 1):
        return grad_kept
    grad_a = torch.zeros_like(a, memory_format=torch.channels_last_3d)
    grad_a[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_kept
    return grad_a


def _weight_gradient(a, grad, stride, path: str, scale=None, shift=None) -> torch.Tensor:
    """``gradᵀ · relu(a * scale + shift)`` (or ``gradᵀ · a``) over the pixels the conv keeps: on
    the kernel's AVX-512 paths its own sum of outer products (oneDNN's weight gradient of
    MF-Net's 1x1x1 convs ran at 60-150 GMAC/s on the AVX-512 CPU, and MKL's GEMM, which takes
    no AVX-512 code on AMD CPUs, at 50-95; the kernel at 80-160, docs/fiber-kernel.md). On the
    AVX2 path MKL's GEMM: the kernel's AVX2 build, forced on that CPU, was the slower (87
    against 50 ms over MF-Net's shapes)."""
    ext = fiber_kernel.extension()
    if path != "avx2":
        return ext.grad_weight_pointwise(a, grad, list(stride), path, scale, shift)
    if scale is not None:
        a = ext.affine_relu(a, scale, shift)
    kept = a[:, :, ::stride[0], ::stride[1], ::stride[2]]

    def rows(t):  # a channels-last (N, C, T, H, W) tensor as (pixels, C)
        return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])

    return (rows(grad).t() @ rows(kept)).reshape(grad.shape[1], a.shape[1], 1, 1, 1)


def bn_conv_trained(bn: BatchNormReLU3d, conv: nn.Conv3d, x: torch.Tensor,
                    residual: torch.Tensor | None = None, shared: int = 0):
    """``conv(relu(bn(x))) (+ residual)`` in training, only where ``trains`` (and, with a
    residual, ``residual_fits``) says so: with the batch's statistics, BatchNorm + ReLU folded
    into the conv (``BNReLUPointwiseFunction``); an eval-mode BatchNorm with gradients runs as
    PyTorch's, then the conv on ``conv_trained``. With ``shared``, ``(that, x, ..., x)``."""
    if not (bn.applies(x) and (bn.training or bn.running_mean is None)):
        y = conv_trained(conv, bn(x), residual)
        return (y, *[x] * shared) if shared else y
    with torch.profiler.record_function(PROFILED_AS):
        weight, bias, mean, invstd = bn.batch_statistics(x)
        return BNReLUPointwiseFunction.apply(x, weight, bias, mean, invstd, conv.weight,
                                             tuple(conv.stride), residual, shared)


def conv_trained(conv: nn.Conv3d, a: torch.Tensor,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(a) (+ residual)`` on ``PointwiseFunction``; only where ``trains`` (and, with a
    residual, ``residual_fits``) says so."""
    if not _kernel_input(conv, a):  # not what the BatchNorm before it returns on this path
        return conv(a) if residual is None else conv(a).add_(residual)
    return PointwiseFunction.apply(a, conv.weight, tuple(conv.stride), residual)
