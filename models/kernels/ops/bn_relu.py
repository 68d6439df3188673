"""BatchNorm + ReLU in one pass, channels last (``csrc/bn_relu.cpp``): ``relu(batch_norm(x))``
where PyTorch runs two ops, and a backward that reads the activations half as often. Pure memory
traffic, so AVX2 code on every path."""

import torch

from models.kernels import build
from models.kernels.ops import bf16
from models.kernels.support import batch_affine

PROFILED_AS = "suite::bn_relu"  # the fused op's forward, as torch.profiler's tables name it


def affine_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel, one pass; fp32, or bf16 (autocast's training)."""
    if x.dtype == torch.bfloat16:
        return bf16.affine_relu(x, (scale, shift))[0][0]
    return build.extension().affine_relu(x, scale, shift)


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean and biased variance per channel (fp32), one pass over ``x`` (fp32 or
    bf16)."""
    mean, var = build.extension().bn_stats(x)
    return mean, var


class BatchNormReLUFunction(torch.autograd.Function):
    """``relu(x * scale + shift)`` with ``scale = weight / sqrt(var + eps)`` and ``shift = bias -
    mean * scale``, for the batch's own ``mean`` and ``var``; the gradient is BatchNorm's
    training-mode one, through the ReLU's mask (recomputed from ``x``, not saved).

    ``shared``: ``x`` is also returned that many times, for its other uses (a unit's residual
    adds). Their gradients are added to ``x``'s as the backward writes it, where autograd would
    sum them in a pass over ``x`` each."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, shared=0):
        scale, shift = batch_affine(weight, bias, mean, invstd)
        ctx.save_for_backward(x, mean, invstd, scale, shift)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        y = affine_relu(x, scale, shift)
        return (y, *[x] * shared) if shared else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, *shared_grads):
        x, mean, invstd, scale, shift = ctx.saved_tensors
        channels_last = torch.channels_last_3d
        grad = (torch.zeros_like(x, memory_format=channels_last) if grad is None
                else grad.contiguous(memory_format=channels_last))
        plus = [g.contiguous(memory_format=channels_last) for g in shared_grads if g is not None]
        # BatchNorm's input gradient (batch statistics) through the ReLU, and its parameters'
        grad_x, grad_weight, grad_bias = build.extension().bn_relu_backward(grad, x, mean, invstd, scale, shift, plus)
        return grad_x, grad_weight, grad_bias, None, None, None
