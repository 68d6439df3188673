"""Pre-activation pointwise (1x1x1) convs, channels last (``csrc/pointwise_cl.cpp``): MF-Net's
BatchNorm -> ReLU -> 1x1x1 conv (-> + residual) in one pass.

Run as PyTorch runs them, that is three passes over memory, and at MF-Net's first two stages
these convs move more bytes than they do multiply-adds. Here ``relu(x * scale + shift)`` is
applied as each block of pixels is read, and the residual added as each output pixel is written.

- inference: ``conv_folded`` (a strided conv, MF-Net's shortcut projections, reads only the
  pixels it keeps) and ``multiplexed``, MF-Net's multiplexer ``x + conv2(conv1(x))`` with the
  middle left in each task's buffer and x's block added back from cache;
- training: ``PointwiseFunction`` (the conv alone) and ``BNReLUPointwiseFunction`` (the
  batch's BatchNorm + ReLU folded in; its backward is two passes over the pixels). The weight's
  gradient is a sum of outer products on the path's vectors (oneDNN's ran at 60-150 GMAC/s on
  the AVX-512 CPU, MKL's GEMM, which takes no AVX-512 code on AMD CPUs, at 50-95; the kernel at
  80-160); on the AVX2 path MKL's GEMM (the kernel's AVX2 build was the slower there: 87 against
  50 ms over MF-Net's shapes).
"""

import torch

from models.kernels import build, paths
from models.kernels.support import batch_affine

PROFILED_AS = "suite::pointwise"  # as torch.profiler's tables name the fused op
MULTIPLEXER_PROFILED_AS = "suite::multiplexer"  # the multiplexer's two convs in one op


def pack(weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """A 1x1x1 conv's weight in this process's path's layout; ``transposed``: the packing of the
    conv from grad y to the input's gradient."""
    return build.extension().pack_pointwise(weight.detach(), paths.table(), transposed)


def conv_folded(x, packed, cout: int, stride, scale=None, shift=None, residual=None) -> torch.Tensor:
    """``conv(relu(x * scale + shift)) (+ residual)`` (or ``conv(x)``) in one pass, no gradient."""
    with torch.profiler.record_function(PROFILED_AS):
        return build.extension().pointwise_cl(x, packed, cout, list(stride), scale, shift, residual,
                                              isa=paths.table())


def multiplexed(x, packed1, mid: int, affine1, packed2, affine2) -> torch.Tensor:
    """``x + conv2(relu(bn2(conv1(relu(bn1(x))))))`` in one pass over ``x`` and one over the
    output, no gradient: each block of pixels goes through both convs (the middle, 24-192
    channels, stays in the task's buffer), and ``x``'s block is added back from cache."""
    with torch.profiler.record_function(MULTIPLEXER_PROFILED_AS):
        return build.extension().multiplexer_cl(x, packed1, mid, *affine1, packed2, *affine2, paths.table())


def output_shape(x: torch.Tensor, weight: torch.Tensor, stride) -> tuple[int, ...]:
    return (x.shape[0], weight.shape[0], *[(d - 1) // s + 1 for d, s in zip(x.shape[2:], stride)])


def input_gradient(grad, a, weight, stride) -> torch.Tensor:
    """The conv's input gradient ``grad · weight``: the kernel with the transposed weight,
    scattered back to the kept pixels where the conv is strided (zeros elsewhere)."""
    grad_kept = build.extension().pointwise_cl(grad, pack(weight, transposed=True), weight.shape[1], [1, 1, 1],
                                               None, None, None, isa=paths.table())
    if tuple(stride) == (1, 1, 1):
        return grad_kept
    grad_a = torch.zeros_like(a, memory_format=torch.channels_last_3d)
    grad_a[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_kept
    return grad_a


def weight_gradient(a, grad, stride, scale=None, shift=None) -> torch.Tensor:
    """``gradᵀ · relu(a * scale + shift)`` (or ``gradᵀ · a``) over the pixels the conv keeps: the
    kernel's own sum of outer products on the AVX-512 paths, MKL's GEMM on the AVX2 path."""
    ext, table = build.extension(), paths.table()
    if table.name != "avx2":
        return ext.grad_weight_pointwise(a, grad, list(stride), table, scale, shift)
    if scale is not None:
        a = ext.affine_relu(a, scale, shift)
    kept = a[:, :, ::stride[0], ::stride[1], ::stride[2]]

    def rows(t):  # a channels-last (N, C, T, H, W) tensor as (pixels, C)
        return t.permute(0, 2, 3, 4, 1).reshape(-1, t.shape[1])

    return (rows(grad).t() @ rows(kept)).reshape(grad.shape[1], a.shape[1], 1, 1, 1)


class PointwiseFunction(torch.autograd.Function):
    """``conv3d(a, weight, stride) (+ residual)`` for a 1x1x1 conv, channels last, on the kernel:
    forward and the input's gradient (``input_gradient``), and the weight's gradient
    ``gradᵀ · a`` over the kept pixels (``weight_gradient``)."""

    @staticmethod
    def forward(ctx, a, weight, stride, residual=None):
        ctx.save_for_backward(a, weight)
        ctx.stride = stride
        with torch.profiler.record_function(PROFILED_AS):
            return build.extension().pointwise_cl(a, pack(weight), weight.shape[0], list(stride), None, None,
                                                  residual, isa=paths.table())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        grad_a = input_gradient(grad, a, weight, ctx.stride) if ctx.needs_input_grad[0] else None
        grad_w = weight_gradient(a, grad, ctx.stride) if ctx.needs_input_grad[1] else None
        return grad_a, grad_w, None, grad if ctx.needs_input_grad[3] else None


class BNReLUPointwiseFunction(torch.autograd.Function):
    """``conv3d(relu(x * scale + shift), weight, stride) (+ residual)``: training's BatchNorm +
    ReLU (the batch's ``mean`` and ``invstd``) folded into the 1x1x1 conv on the kernel. The
    activated input is made a block of pixels at a time in the forward and again in the weight's
    gradient, never written out. The backward: every gradient in two passes over the pixels
    (``bn_pointwise_backward``). ``shared``: ``x`` also returned that many times, their
    gradients added to x's as it is written."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, mean, invstd, weight, stride, residual, shared):
        scale, shift = batch_affine(bn_weight, bn_bias, mean, invstd)
        ctx.save_for_backward(x, mean, invstd, scale, shift, weight)
        ctx.stride = stride
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        with torch.profiler.record_function(PROFILED_AS):
            y = build.extension().pointwise_cl(x, pack(weight), weight.shape[0], list(stride), scale, shift,
                                               residual, isa=paths.table())
        return (y, *[x] * shared) if shared else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, *shared_grads):
        x, mean, invstd, scale, shift, weight = ctx.saved_tensors
        channels_last = torch.channels_last_3d
        grad = (torch.zeros(output_shape(x, weight, ctx.stride), memory_format=channels_last)
                if grad is None else grad.contiguous(memory_format=channels_last))
        ext, table = build.extension(), paths.table()
        grad_w = grad_x = grad_bn_weight = grad_bn_bias = None
        plus = [g.contiguous(memory_format=channels_last) for g in shared_grads if g is not None]
        fused_w = ctx.needs_input_grad[5] and table.name != "avx2"  # there MKL's GEMM (weight_gradient)
        if any(ctx.needs_input_grad[:3]):  # every gradient in two passes over the pixels
            grad_x, grad_bn_weight, grad_bn_bias, fused = ext.bn_pointwise_backward(
                grad, x, pack(weight, transposed=True), mean, invstd, scale, shift, plus, list(ctx.stride),
                table, fused_w)
            if fused_w:
                grad_w = fused
        if ctx.needs_input_grad[5] and grad_w is None:
            grad_w = weight_gradient(x, grad, ctx.stride, scale, shift)
        grad_residual = grad if ctx.needs_input_grad[7] else None
        return grad_x, grad_bn_weight, grad_bn_bias, None, None, grad_w, None, grad_residual, None
