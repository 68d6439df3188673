"""bf16 inference on the suite's kernels: a pre-activation network's convs as oneDNN's bf16
convs with their epilogues fused, and the BatchNorm + ReLU that cannot be folded as the library's
bf16 rows (``csrc/bf16*.cpp``).

In bf16 autocast, PyTorch runs MF-Net's convs on oneDNN (AMX tiles where the CPU has them) but
every BatchNorm, ReLU, residual add and weight cast as an op of its own, over bf16 tensors; those
took more time than the convs (docs/kernels-log.md, "bf16"). Here, in a unit's inference:

- a BatchNorm + ReLU that follows a conv is folded into it: the conv's weight scaled per output
  channel, its shift the conv's fp32 bias, the ReLU oneDNN's post-op;
- a residual add is the conv's binary post-op (a pointwise conv's), or the library's bf16 add in
  place (a grouped conv's, whose fused add oneDNN runs as a slower add of its own);
- a BatchNorm + ReLU before a conv whose input is used raw elsewhere (a unit's input feeds its
  residuals) is one pass of the library's rows, two BatchNorms of one input in the same pass.

The weights are folded, cast to bf16 and put in oneDNN's blocked layout once per input shape
(``folded``), where autocast casts every weight at every call.
"""

import functools
import time

import torch
from torch import nn

from models.kernels import build, paths
from models.kernels.support import affine_key, eval_affine, kept, traced, versions

PROFILED_AS = "suite::bn_relu_bf16"  # the rows' pass, as torch.profiler's tables name it
FOLDED = "_suite_bf16_folded"  # a conv's folded bf16 weight and bias, kept on the conv
FINITE = "_suite_bf16_finite"  # whether a pre-activation conv's weight and affine are finite
MULTIPLEXED = "_suite_bf16_multiplexed"  # a BatchNorm's bias for ``multiplexer_relu``, or None
DILATION = [1, 1, 1]


def affine_relu(x: torch.Tensor, *affines: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """``([relu(x * scale + shift) for (scale, shift) in affines], whether x is finite)`` (one or
    two affines), x bf16 channels last, in one pass: computed in fp32, rounded to bf16 once.
    oneDNN's ReLU epilogue turns NaN into 0 where PyTorch's ReLU keeps it, so a caller whose input
    is not finite runs PyTorch's ops instead."""
    scales, shifts = zip(*affines)
    with torch.profiler.record_function(PROFILED_AS):
        return build.extension().affine_relu_bf16(x, list(scales), list(shifts), _native())


def finite(preact: nn.Sequential) -> bool:
    """Whether a pre-activation conv's weight and BatchNorm affine are finite (kept while they
    are unchanged): where they are not, NaN reaches outputs through PyTorch's zero padding (0 *
    NaN) and ReLU that it does not reach through oneDNN's epilogues."""
    bn, _, module = preact
    return finite_conv(module, bn)


def finite_conv(module: nn.Conv3d, bn: nn.BatchNorm3d) -> bool:
    """``finite`` for a conv and the BatchNorm that goes with it, either side."""
    return kept(module, FINITE, (versions(module.weight), affine_key(bn)),
                lambda: bool(module.weight.detach().float().sum().isfinite()
                             and torch.cat(eval_affine(bn)).sum().isfinite()))


def geometry(conv: nn.Conv3d, input_shape) -> tuple[slice, list[int], list[int]]:
    """(the kernel frames, padding, stride) oneDNN runs ``conv`` with on inputs of
    ``input_shape``: the conv's own, except on a one-frame input, where a kernel three frames
    deep with one frame of padding reads only its middle frame, and the conv runs as that
    (1, 3, 3) conv. That one is exact, and it keeps clear of oneDNN's bf16 AMX kernel for a
    one-frame input: on some shapes (12 channels per group at 8x8) it returned NaN, or crashed
    the process with a packed weight (docs/kernels-log.md, "bf16")."""
    (kt, *_), (pt, *pad), (_, *stride) = conv.kernel_size, conv.padding, conv.stride
    if input_shape[2] == 1 and kt == 3 and pt == 1:
        return slice(1, 2), [0, *pad], [1, *stride]
    return slice(None), list(conv.padding), list(conv.stride)


def fold(conv: nn.Conv3d, after: nn.BatchNorm3d | None, input_shape, before: torch.Tensor | None = None) -> tuple:
    """``conv``'s weight for oneDNN in bf16, with an eval-mode BatchNorm after it (``after``)
    folded in, laid out for inputs of ``input_shape``: ``(weight, bias, padding, stride,
    groups)``, bias fp32 (the BatchNorm's shift) or None, the geometry ``geometry``'s, the groups
    ``merge_groups``' choice. ``before``, a positive scale per input channel, is folded into the
    weight as well (``multiplexer_relu``'s)."""
    frames, padding, stride = geometry(conv, input_shape)
    weight = conv.weight.detach()[:, :, frames].float()
    bias = None
    if before is not None:  # input channel g * per_group + j of output o's group g is weight[o, j]
        out, per_group = weight.shape[:2]
        weight = weight * before.view(conv.groups, 1, per_group).expand(
            conv.groups, out // conv.groups, per_group).reshape(out, per_group, 1, 1, 1)
    if after is not None:
        scale, shift = eval_affine(after)
        weight = weight * scale.view(-1, *[1] * (weight.dim() - 1))
        bias = shift.clone()
    weight = weight.to(torch.bfloat16)
    merge = merge_groups(weight, bias, padding, stride, conv.groups, after is not None, input_shape)
    weight, groups = merged(weight, conv.groups, merge), conv.groups // merge
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, DILATION, groups,
                                                          list(input_shape))
    return packed, bias, padding, stride, groups


# How many of a grouped conv's groups oneDNN runs as one, block-diagonal, tried per shape: with 1 to
# 6 channels per group its bf16 kernels ran slower than on the same conv with 2-8 groups merged
# and zeros between (MF-Net's first fiber conv, 1 input channel per group, 12.8 ms as 16 groups
# against 2.3 ms as 2, on an Intel Xeon with AMX: docs/kernels-log.md). Only where the merged
# group stays narrow (MERGED_MAX input channels): past that the zeros cost more than they save.
MERGES = (1, 2, 4, 8, 16)
MERGED_MAX = 64
_merges: dict = {}  # (input shape, weight shape, padding, stride, groups, ReLU) -> the merge chosen


def merged(weight: torch.Tensor, groups: int, merge: int) -> torch.Tensor:
    """A grouped conv's ``weight`` (``groups`` groups) as the same conv's with ``groups // merge``
    groups: each new group ``merge`` old ones side by side, zero between them. Exact: the zeros
    add nothing to a finite input (the units' inputs are checked finite)."""
    if merge == 1:
        return weight
    out, per_group, *kernel = weight.shape
    old = weight.reshape(groups // merge, merge, out // groups, per_group, *kernel)
    new = weight.new_zeros(groups // merge, merge, out // groups, merge, per_group, *kernel)
    for j in range(merge):
        new[:, j, :, j] = old[:, j]
    return new.reshape(out, merge * per_group, *kernel)


def merge_groups(weight: torch.Tensor, bias, padding, stride, groups: int, relu: bool, input_shape) -> int:
    """The fastest merge of ``MERGES`` for this conv at this input shape, timed once per process
    and shape (the fastest of three calls each, on a zero input of the shape, the candidates
    taking turns); 1 where there is nothing to choose."""
    per_group = weight.shape[1]
    candidates = [m for m in MERGES if groups % m == 0 and m * per_group <= MERGED_MAX]
    key = (tuple(input_shape), tuple(weight.shape), tuple(padding), tuple(stride), groups, relu)
    if len(candidates) < 2 or key in _merges:
        return _merges.get(key, 1)
    x = torch.zeros(input_shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    calls = {}
    for m in candidates:
        packed = torch.ops.mkldnn._reorder_convolution_weight(merged(weight, groups, m), padding, stride,
                                                              DILATION, groups // m, list(input_shape))
        calls[m] = functools.partial(torch.ops.mkldnn._convolution_pointwise, x, packed, bias, padding, stride,
                                     DILATION, groups // m, "relu" if relu else "none", [], "")
        calls[m]()  # oneDNN makes its kernel on the first call
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(3):
        for m, call in calls.items():
            started = time.perf_counter()
            call()
            best[m] = min(best[m], time.perf_counter() - started)
    _merges[key] = min(best, key=best.get)
    return _merges[key]


def merge_choices() -> dict:
    """The merges chosen in this process: (input shape, weight shape, padding, stride, groups,
    ReLU) -> groups run as one."""
    return dict(_merges)


SHAPES_KEPT = 4  # input shapes a conv keeps a folded weight for (a run's batch 1 and throughput batch)


def folded(conv: nn.Conv3d, after: nn.BatchNorm3d | None, input_shape, before: nn.BatchNorm3d | None = None,
           relu_of: nn.BatchNorm3d | None = None) -> tuple:
    """``fold``, kept on ``conv`` for its last few input shapes while its weight and the folded
    BatchNorms are unchanged: ``before``'s positive scale (``multiplexer_relu``) folded into the
    weight's input channels where it is given, and where ``relu_of`` is, the bias
    ``multiplexer_relu(relu_of)`` the conv's."""
    key = (versions(conv.weight), *(None if bn is None else affine_key(bn) for bn in (after, before, relu_of)))
    kept_ = conv.__dict__.setdefault(FOLDED, {})  # a plain attribute: no checkpoint key
    shape = (tuple(input_shape), before is not None, relu_of is not None)
    if shape not in kept_ or kept_[shape][0] != key:
        if shape not in kept_ and len(kept_) >= SHAPES_KEPT:
            kept_.pop(next(iter(kept_)))  # the oldest
        scale = None if before is None else eval_affine(before)[0]
        weight, bias, padding, stride, groups = fold(conv, after, input_shape, scale)
        if relu_of is not None:
            # oneDNN's binary form (the add this bias joins) takes a bias of the input's dtype
            # only: t / s rounded to bf16, as the sum it joins is
            bias = multiplexer_relu(relu_of).to(torch.bfloat16)
        kept_[shape] = (key, (weight, bias, padding, stride, groups))
    return kept_[shape][1]


def multiplexer_relu(bn: nn.BatchNorm3d) -> torch.Tensor | None:
    """The bias that carries ``relu(bn(h))``, the BatchNorm + ReLU a multiplexer's output ``h``
    meets before the fiber conv, into the multiplexer's last conv, or None where it cannot.

    With ``s`` and ``t`` the BatchNorm's eval affine, ``relu(s * h + t) = s * relu(h + t / s)``
    where ``s > 0``: the conv that writes ``h`` adds ``t / s`` as its bias and applies the ReLU
    as it writes, and the fiber conv reading it takes ``s`` into its weight's input channels
    (``folded(..., before=bn)``; zero padding stays zero). That saves a pass over the widest
    tensor of every unit. Where a channel's ``s`` is not positive, or ``t / s`` is not finite,
    the unit keeps the BatchNorm + ReLU as a pass of its own. Kept while the affine is unchanged."""
    def make():
        scale, shift = eval_affine(bn)
        bias = shift / scale
        return bias if bool((scale > 0).all()) and bool(bias.isfinite().all()) else None

    return kept(bn, MULTIPLEXED, affine_key(bn), make)


def conv(x: torch.Tensor, module: nn.Conv3d, after: nn.BatchNorm3d | None = None,
         add: torch.Tensor | None = None, before: nn.BatchNorm3d | None = None,
         add_relu: nn.BatchNorm3d | None = None) -> torch.Tensor:
    """``module(x)`` on oneDNN in bf16 with its epilogue: ``relu(after(conv(x)))`` where
    ``after`` (an eval-mode BatchNorm) is given, ``conv(x) + add`` where ``add`` is, else
    ``conv(x)``. ``add_relu`` (a pointwise conv's, with ``add``) is the BatchNorm whose
    ``multiplexer_relu`` bias makes it ``relu(conv(x) + bias + add)``; ``before`` a BatchNorm
    whose positive scale the weight's input channels take (the conv after it). x (and add) bf16,
    channels last; the output too."""
    weight, bias, padding, stride, groups = folded(module, after, x.shape, before, add_relu)
    args = (weight, bias, padding, stride, DILATION, groups)
    if add is not None and module.groups == 1:
        unary = "relu" if add_relu is not None else None
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, *args, "add", None, unary, [], None)
    y = torch.ops.mkldnn._convolution_pointwise(x, *args, "relu" if after is not None else "none", [], "")
    # a grouped conv's fused add runs as the conv and PyTorch's bf16 add_, 9x this add's time on
    # MF-Net's widest tensor (docs/kernels-log.md)
    return y if add is None else add_(y, add)


def max_pool(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride, padding)`` in bf16, x bf16 channels last (the output
    too), no indices: the library's, where autocast would run PyTorch's in fp32 with a cast each
    way. NaN propagates as PyTorch's does; the maximum keeps its bits."""
    return build.extension().max_pool_bf16(x, list(kernel), list(stride), list(padding))


def add_(y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``y += r`` in place, both bf16 channels last of one shape, rounded to bf16 once."""
    return build.extension().add_bf16_(y, r, _native())


def _native() -> bool:
    """Whether the rows run their AVX512-BF16 build here (else the emulated one)."""
    return paths.bf16_path() == paths.BF16_NATIVE


def autocast() -> bool:
    """Whether this call is under CPU bf16 autocast, untraced, with the library built: where a
    fused module or block considers its bf16 paths."""
    return (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not traced() and build.extension() is not None)


def supported() -> bool:
    """Whether oneDNN runs bf16 convs in this build of PyTorch."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())
