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
from models.bn_relu import BatchNormReLU3d

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
    forward and the input's gradient (``grad · weight``, the kernel with the transposed weight,
    scattered back to the kept pixels where strided), and the weight's gradient
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
        ext, stride = fiber_kernel.extension(), ctx.stride
        k = weight.shape[1]
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        strided = tuple(stride) != (1, 1, 1)
        kept = a[:, :, ::stride[0], ::stride[1], ::stride[2]] if strided else a
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            packed_t = ext.pack_pointwise(weight.detach(), ctx.path, transposed=True)
            grad_kept = ext.pointwise_cl(grad, packed_t, k, [1, 1, 1], None, None, None, path=ctx.path)
            if strided:
                grad_a = torch.zeros_like(a, memory_format=torch.channels_last_3d)
                grad_a[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_kept
            else:
                grad_a = grad_kept
        if ctx.needs_input_grad[1]:
            grad_w = _weight_gradient(a, kept, grad, stride, ctx.path)
        grad_residual = grad if ctx.needs_input_grad[3] else None
        return grad_a, grad_w, None, grad_residual


def _weight_gradient(a, kept, grad, stride, path: str) -> torch.Tensor:
    """``gradᵀ · a`` over the pixels the conv keeps: on the kernel's AVX-512 paths its own sum
    of outer products (oneDNN's weight gradient of MF-Net's 1x1x1 convs ran at 60-150 GMAC/s on
    the AVX-512 CPU, and MKL's GEMM, which takes no AVX-512 code on AMD CPUs, at 50-95; the
    kernel at 80-160, docs/fiber-kernel.md). On the AVX2 path MKL's GEMM: the kernel's AVX2
    build, forced on that CPU, was the slower (87 against 50 ms over MF-Net's shapes)."""
    if path == "avx2":
        def rows(t):  # a channels-last (N, C, T, H, W) tensor as (pixels, C)
            return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])

        return (rows(grad).t() @ rows(kept)).reshape(grad.shape[1], a.shape[1], 1, 1, 1)
    return fiber_kernel.extension().grad_weight_pointwise(a, grad, list(stride), path)


def conv_trained(conv: nn.Conv3d, a: torch.Tensor,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(a) (+ residual)`` on ``PointwiseFunction``; only where ``trains`` (and, with a
    residual, ``residual_fits``) says so."""
    if not _kernel_input(conv, a):  # not what the BatchNorm before it returns on this path
        return conv(a) if residual is None else conv(a).add_(residual)
    return PointwiseFunction.apply(a, conv.weight, tuple(conv.stride), residual)
