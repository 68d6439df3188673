"""What every op of the kernel library asks before it runs, and the small tensors it keeps:
whether a call is traced or hooked, the layout the kernels read, BatchNorm as a per-channel
affine, and a cache on a module that holds no checkpoint key."""

import torch
from torch import nn


def traced() -> bool:
    """Whether this call is compiled, traced or run under a dispatch mode (FLOP counters such as
    ``torch.utils.flop_counter.FlopCounterMode``, fake tensors, ``torch.export``). The library's
    ops are opaque calls to all of these, so there they get PyTorch's own ops: a FLOP count must
    see the fiber convs."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._len_torch_dispatch_stack() > 0)


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook (on one of ``modules``, or global) would see a call that a fused
    op makes without calling the module: then the modules run as modules, so hooks
    (``op_profile.py``'s, a user's) see what they always have."""
    from torch.nn.modules import module

    return (bool(module._global_forward_hooks or module._global_forward_pre_hooks)
            or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


def channels_last(x: torch.Tensor, stride=(1, 1, 1)) -> bool:
    """Whether the kernels read ``x`` as NDHWC, MF-Net's default layout: an NDHWC tensor, or one
    that is both layouts at once (one channel, or one pixel) where the conv is strided, which
    only the channels-last kernel handles. Otherwise the fiber conv reads it NCDHW (stride 1)."""
    if not x.is_contiguous(memory_format=torch.channels_last_3d):
        return False
    return not x.is_contiguous() or tuple(stride) != (1, 1, 1)


def kept(module: nn.Module, name: str, key: tuple, make):
    """``make()``, kept on ``module`` and computed again only when ``key`` changes; in a plain
    attribute, not a buffer, so no checkpoint key."""
    cached = module.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, make())
        module.__dict__[name] = cached
    return cached[1]


def versions(*tensors: torch.Tensor) -> tuple:
    """What says that tensors are unchanged, for a ``kept`` key: each one's storage and version
    (an in-place change, an optimizer step or ``load_state_dict``, bumps the version)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def affine_key(bn: nn.BatchNorm3d) -> tuple:
    """What says that an eval-mode BatchNorm's affine is unchanged (a ``kept`` key)."""
    return versions(*[t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None])


EVAL_AFFINE = "_suite_eval_affine"  # where ``eval_affine`` keeps its result on a BatchNorm


def eval_affine(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's eval-mode affine, (scale, shift) per channel (fp32, contiguous), for the folded
    BatchNorm + ReLU: ``scale = weight / sqrt(running_var + eps)``, ``shift = bias -
    running_mean * scale``. Kept on ``bn`` while its parameters and statistics are unchanged."""
    def fold():
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().float()
        shift = -bn.running_mean.float() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().float()
        return scale.contiguous(), shift.contiguous()

    return kept(bn, EVAL_AFFINE, affine_key(bn), fold)


def batch_affine(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                 invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm with the batch's statistics as ``x * scale + shift`` per channel: ``scale =
    weight * invstd``, ``shift = bias - mean * scale`` (what the fused ops apply)."""
    scale = invstd * weight
    return scale, bias - mean * scale


def residual_fits(conv: nn.Conv3d, x: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether ``residual`` can be added inside ``conv``'s fused op: fp32, channels last, the
    shape of ``conv(x)``. Else the caller adds it after, and PyTorch's add says what does not
    fit."""
    out = [(d + 2 * p - k) // s + 1 for d, p, k, s in
           zip(x.shape[2:], conv.padding, conv.kernel_size, conv.stride)]
    return (residual.dtype == torch.float32 and residual.device == x.device
            and tuple(residual.shape) == (x.shape[0], conv.out_channels, *out)
            and residual.is_contiguous(memory_format=torch.channels_last_3d))


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)
