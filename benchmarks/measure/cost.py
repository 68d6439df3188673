"""Cost: parameters and multiply-adds, counted two independent ways.

Conventions (docs/counting.md): one multiply-add (MAC) is what the paper calls a
"FLOP"; we report ``gmacs`` and ``gflops = 2 * gmacs`` as separate metrics.

- ``count_macs`` uses ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: no real
  compute, instant even for I3D at 64x224x224. It counts matmul/conv only (policy
  "conv+linear") and reports 2 per MAC, which we halve.
- ``count_macs_fvcore`` uses fvcore's ``FlopCountAnalysis`` on real tensors: one MAC per "flop",
  and it also counts BatchNorm, so we report both its conv+linear part (the cross-check) and its
  total (policy "fvcore-all": what fvcore-based model zoos print).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models

# fvcore operator names whose counts are conv/matmul work, the same policy as FlopCounterMode
FVCORE_CONV_LINEAR = ("conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm")
LAYER_TYPES = ("dense_conv", "grouped_conv", "pointwise_conv", "linear", "other")


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int  # conv + linear multiply-adds for one forward pass at ``input_shape``
    by_layer_type: dict[str, int]  # macs split over LAYER_TYPES
    input_shape: tuple[int, ...]  # (N, C, T, H, W) or (N, C, H, W)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_shape(name: str, clip: tuple[int, ...] | None = None, batch: int = 1) -> tuple[int, ...]:
    """The model's input at batch ``batch``: the spec's paper input, or ``clip`` (T, H, W) for
    video models / (H, W) or (T, H, W) for image models (T ignored)."""
    spec = models.get_spec(name)
    shape = spec.input_shape
    if clip is not None:
        shape = (3, *clip) if spec.is_video else (3, *clip[-2:])
    return (batch, *shape)


def count_macs(name: str, clip: tuple[int, ...] | None = None) -> Cost:
    """Params and multiply-adds of ``name`` at batch 1, built and run on the meta device."""
    shape = input_shape(name, clip)
    with torch.device("meta"):
        model = models.create_model(name).eval()
        x = torch.empty(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    total = counter.get_total_flops() // 2
    return Cost(count_params(model), total, _by_layer_type(model, counter, total), shape)


def _by_layer_type(model: nn.Module, counter: FlopCounterMode, total: int) -> dict[str, int]:
    """Split the count over leaf modules' types; work outside conv/linear modules is "other"."""
    split = dict.fromkeys(LAYER_TYPES, 0)
    root = type(model).__name__
    modules = dict(model.named_modules())
    for key, ops in counter.get_flop_counts().items():
        fqn = key.removeprefix(root + ".")
        module = modules.get(fqn)
        if module is None or key == root or next(module.children(), None) is not None:
            continue  # "Global", the root, and containers repeat their leaves' counts
        split[layer_type(module)] += sum(ops.values()) // 2
    split["other"] += total - sum(split.values())
    return split


def layer_type(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.groups > 1:
            return "grouped_conv"
        if all(k == 1 for k in module.kernel_size):
            return "pointwise_conv"
        return "dense_conv"
    return "other"


def count_macs_fvcore(name: str, clip: tuple[int, ...] | None = None) -> dict[str, int]:
    """fvcore's count on real tensors at batch 1: ``conv_linear`` and ``all`` (with BN etc.)."""
    from fvcore.nn import FlopCountAnalysis  # imported late: fvcore is slow to import

    torch.manual_seed(0)
    model = models.create_model(name).eval()
    x = torch.randn(input_shape(name, clip))
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    conv_linear = sum(v for op, v in by_op.items() if op in FVCORE_CONV_LINEAR)
    return {"conv_linear": int(conv_linear), "all": int(analysis.total())}
