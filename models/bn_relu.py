"""BatchNorm + ReLU as one op on the suite's kernel: ``relu(batch_norm(x))`` in one pass.

Every fiber conv and every pointwise conv of MF-Net is preceded by BatchNorm and ReLU (the
pre-activation units of its ``BNReLUConv``). PyTorch runs those as two ops; at the throughput
batch and in training they are a fifth of MF-Net's step (``op_profile.py``): pure memory
traffic, which one pass halves. The C++ is ``models/csrc/bn_relu.cpp``, built into the fiber
kernel's extension; ``docs/fiber-kernel.md`` has the formulas and the measured effect.

- Where: CPU, a channels-last-3d fp32 input, the AVX2 path; training mode (batch statistics,
  running statistics updated as ``nn.BatchNorm3d`` does), and eval mode without gradients.
  Elsewhere (an eval-mode BN that needs gradients, another layout, ``torch.compile``) it is
  ``relu(bn(x))`` as PyTorch computes it.
- ``use_kernel`` (``models/fiber_kernel.py``) turns every ``BatchNorm3d`` followed by a
  ``ReLU`` inside an ``nn.Sequential`` into ``BatchNormReLU3d`` and that ReLU into a
  ``FusedReLU`` (an identity); ``use_stock`` turns them back. The parameters, buffers and
  checkpoint keys stay as they are.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models import fiber_kernel

PROFILED_AS = "suite::bn_relu"  # the fused op's forward, as torch.profiler's tables name it


def batch_affine(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                 invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm with the batch's statistics as ``x * scale + shift`` per channel: ``scale =
    weight * invstd``, ``shift = bias - mean * scale`` (what the fused ops apply)."""
    scale = invstd * weight
    return scale, bias - mean * scale


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
        y = fiber_kernel.extension().affine_relu(x, scale, shift)
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
        grad_x, grad_weight, grad_bias = fiber_kernel.extension().bn_relu_backward(
            grad, x, mean, invstd, scale, shift, plus)
        return grad_x, grad_weight, grad_bias, None, None, None


class BatchNormReLU3d(nn.BatchNorm3d):
    """``relu(BatchNorm3d(x))`` in one pass on the suite's kernel where it applies
    (``applies``), else the two as PyTorch runs them. A subclass with no state of its own: the
    same parameters, buffers and checkpoint keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.applies(x):
            return F.relu(super().forward(x))
        with torch.profiler.record_function(PROFILED_AS):
            return self._fused(x)

    def forward_shared(self, x: torch.Tensor, shared: int) -> tuple[torch.Tensor, ...]:
        """``(self(x), x, ..., x)`` with ``x`` ``shared`` times, for ``x``'s other uses. On the
        kernel in training their gradients join ``x``'s in the backward's one pass
        (``BatchNormReLUFunction``); elsewhere they are ``x`` itself."""
        if not (shared and self.applies(x) and torch.is_grad_enabled()):
            return (self(x), *[x] * shared)
        with torch.profiler.record_function(PROFILED_AS):
            return self._fused(x, shared)

    def _fused(self, x: torch.Tensor, shared: int = 0):
        batch_stats = self.training or self.running_mean is None
        if not batch_stats:  # eval mode, no gradient: the running statistics' affine
            y = fiber_kernel.extension().affine_relu(x, *fiber_kernel.eval_affine(self))
            return (y, *[x] * shared) if shared else y
        return BatchNormReLUFunction.apply(x, *self.batch_statistics(x), shared)

    def batch_statistics(self, x: torch.Tensor):
        """``(weight, bias, mean, invstd)`` for a batch-statistics forward on the kernel (the
        running statistics updated as ``nn.BatchNorm3d`` does): what the fused ops take."""
        mean, var = fiber_kernel.extension().bn_stats(x)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        invstd = torch.rsqrt(var + self.eps)
        weight = self.weight if self.weight is not None else torch.ones_like(mean)
        bias = self.bias if self.bias is not None else torch.zeros_like(mean)
        return weight, bias, mean, invstd

    def applies(self, x: torch.Tensor) -> bool:
        """Whether this call runs on the kernel: see the module docstring."""
        if fiber_kernel.traced():
            return False
        if not (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 5
                and x.shape[1] == self.num_features  # else PyTorch's own error says so
                and x.is_contiguous(memory_format=torch.channels_last_3d) and x.numel() > 0
                and not torch.is_autocast_enabled("cpu")):
            return False
        batch_stats = self.training or self.running_mean is None
        if not batch_stats and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False  # eval-mode BatchNorm with gradients: PyTorch's own
        if batch_stats and x.numel() == x.shape[1]:
            return False  # one value per channel: PyTorch's own says so
        ext = fiber_kernel.extension()
        return ext is not None and fiber_kernel.path() in fiber_kernel.CL_PATHS

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, rows: int) -> None:
        """As ``nn.BatchNorm3d`` in training: momentum (or the cumulative average where it is
        None), the unbiased variance."""
        if not (self.training and self.track_running_stats):
            return
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
            if self.running_mean is not None:
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (rows / (rows - 1)), factor)


class FusedReLU(nn.Identity):
    """Where a ``ReLU`` stood after a ``BatchNormReLU3d``, which applies it: an identity that
    remembers the ReLU's ``inplace``, so ``unfuse_bn_relu`` can put it back."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "applied by the BatchNormReLU3d before it"


def fuse_bn_relu(model: nn.Module) -> int:
    """Turn every ``BatchNorm3d`` followed by a ``ReLU`` in an ``nn.Sequential`` of ``model``
    into ``BatchNormReLU3d`` and that ReLU into a ``FusedReLU``, in place; how many. Only a
    Sequential's order is the order its children run in, so only there is the pair certain."""
    count = 0
    for seq, first, second in _pairs(model):
        bn, relu = seq._modules[first], seq._modules[second]
        if type(bn) is nn.BatchNorm3d and type(relu) is nn.ReLU:
            bn.__class__ = BatchNormReLU3d
            seq._modules[second] = FusedReLU(relu.inplace)
            count += 1
    return count


def unfuse_bn_relu(model: nn.Module) -> int:
    """Undo ``fuse_bn_relu``, in place: each ``BatchNormReLU3d`` a plain ``BatchNorm3d`` again and
    the ``FusedReLU`` after it a ``ReLU``; how many."""
    count = 0
    for seq, first, second in _pairs(model):
        bn, relu = seq._modules[first], seq._modules[second]
        if type(bn) is BatchNormReLU3d and type(relu) is FusedReLU:
            bn.__class__ = nn.BatchNorm3d
            bn.__dict__.pop(fiber_kernel.EVAL_AFFINE, None)
            seq._modules[second] = nn.ReLU(relu.inplace)
            count += 1
    return count


def _pairs(model: nn.Module):
    """(Sequential, name, next name) for every two neighbours in ``model``'s Sequentials."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        yield from ((seq, first, second) for first, second in zip(names, names[1:]))
