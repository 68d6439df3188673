"""Where a model's time goes (``benchmarks/op_profile.py``).

Two tables and a bound, to explain a low ``peak_fraction``:

- ``torch.profiler``'s per-op table (self CPU or CUDA time) over a few steps;
- every convolution timed alone on the input it sees in the network (forward, or with
  ``--train`` forward + backward), grouped by kind (dense, pointwise 1x1(x1), grouped) and
  channels per group, with its achieved GMAC/s. A kind far below the machine's peak is what
  bounds the model; the fiber (grouped) convs of MF-Net with 6 or 12 channels per group are
  the case in point (the paper's footnote 5);
- the bound the grouped convs alone set: the model's multiply-adds over the time its grouped
  convs take, the rate it could reach if every other op were free; and the same over all its
  convs, the rate it could reach if only BatchNorm, ReLU, adds and pooling were free.
  ``--against NAME`` times another model's same step in the same process (at its spec input)
  for comparison;
- what footnote 5's forecast asks of a grouped-conv kernel here (``speedup_needed``): the whole
  step timed as the harness times it, and how fast its grouped convs would have to run for the
  step to be ``FOOTNOTE5_FORECAST``'s threshold times faster, against this machine's dense conv
  rate; or, where even free grouped convs fall short, the most they could give (Amdahl).

It runs the same steps as the harness (``benchmarks/measure/workload.py``), under the same settings.
"""

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.measure import peak, speed, timing
from benchmarks.measure.cost import count_macs, layer_type
from benchmarks.measure.workload import Setup, Workload
from models import ledger

CONVS = (nn.Conv2d, nn.Conv3d)


def conv_kind(conv: nn.Conv2d | nn.Conv3d) -> str:
    """``cost.layer_type``'s kind, with the channels per group of a grouped conv."""
    kind = layer_type(conv).removesuffix("_conv")
    if kind == "grouped":
        return f"grouped {conv.in_channels // conv.groups}->{conv.out_channels // conv.groups} per group"
    return kind


def conv_table(workload: Workload, x: torch.Tensor, repeats: int = 3,
               train: bool = False) -> list[tuple]:
    """(kind, kernel, ms per step, GMACs, GMAC/s) per kind of conv, slowest first. ``train``:
    forward + backward (input and weight gradients), counted as ``TRAIN_MACS_FACTOR`` x forward."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.setdefault(m, a[0].detach().clone()))
             for m in workload.eager_model.modules() if isinstance(m, CONVS)]
    workload.infer_step(x)
    for hook in hooks:
        hook.remove()
    factor = speed.TRAIN_MACS_FACTOR if train else 1
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    with torch.inference_mode(not train), workload.autocast():
        for conv, inp in seen.items():
            # captured under inference mode: a clone outside it is an ordinary tensor autograd takes
            step = _conv_step(conv, inp.clone().requires_grad_() if train else inp, train)
            step()  # warm-up: oneDNN picks and caches its kernel
            workload.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                out = step()
            workload.synchronize()
            seconds = (time.perf_counter() - start) / repeats
            macs = factor * out.numel() * conv.in_channels // conv.groups * math.prod(conv.kernel_size)
            entry = totals[(conv_kind(conv), "x".join(map(str, conv.kernel_size)))]
            entry[0] += seconds
            entry[1] += macs
    return sorted(((kind, kernel, s * 1e3, macs / 1e9, macs / s / 1e9)
                   for (kind, kernel), (s, macs) in totals.items()), key=lambda r: -r[2])


def _conv_step(conv: nn.Module, inp: torch.Tensor, train: bool):
    if not train:
        return lambda: conv(inp)
    grad = torch.randn_like(conv(inp))

    def step():
        conv.weight.grad = inp.grad = None
        out = conv(inp)
        out.backward(grad)
        return out

    return step


def grouped_bound(rows: list[tuple], step_gmacs: float) -> tuple[float, float]:
    """(ms, GMAC/s): the time the grouped convs alone take per step, and the most the whole
    step can achieve while they take it: ``step_gmacs`` over that time."""
    ms = sum(r[2] for r in rows if r[0].startswith("grouped"))
    return ms, (step_gmacs / (ms / 1e3) if ms else math.inf)


def speedup_needed(step_ms: float, rows: list[tuple], target: float) -> tuple[float, float, float]:
    """(ceiling, ms, GMAC/s) for a step of ``step_ms`` whose grouped convs are ``rows``'
    grouped ones: the speed-up the step would gain were they free (Amdahl: the rest of the step
    stays), and the time and rate they would have to reach for a ``target`` x faster step
    (``ms`` <= 0 and ``GMAC/s`` inf where the ceiling is below the target). The grouped convs'
    time is their time alone, so the rest of the step is estimated as the difference."""
    grouped = [r for r in rows if r[0].startswith("grouped")]
    grouped_ms, gmacs = sum(r[2] for r in grouped), sum(r[3] for r in grouped)
    rest = max(step_ms - grouped_ms, 1e-9)
    ceiling = step_ms / rest
    needed = step_ms / target - rest
    return ceiling, needed, (gmacs / (needed / 1e3) if needed > 0 else math.inf)


def achieved_rate(name: str, setup: Setup, batch: int, train: bool) -> float:
    """GMAC/s of ``name``'s inference or training step at its spec input, timed as the harness does."""
    workload = Workload(name, setup)
    x, y = workload.inputs(batch)
    if train:
        train_step = workload.make_train_step()
        step = lambda: train_step(x, y)  # noqa: E731
    else:
        step = lambda: workload.infer_step(x)  # noqa: E731
    result = timing.time_step(step, workload.synchronize, min_run_time=1.0)
    factor = speed.TRAIN_MACS_FACTOR if train else 1
    return factor * count_macs(name).gmacs * batch / result.median



@dataclass(frozen=True)
class ProfileOptions:
    """What ``op_profile.py`` profiles: one model's step under one setup."""

    model: str = "mfnet"
    batch: int = 1
    clip: tuple[int, int, int] | None = None  # None: the spec's input
    train: bool = False  # a training step, not inference
    setup: Setup = Setup()
    rows: int = 15  # of the per-op table
    against: str | None = None  # another model whose same step is timed for comparison


def print_profile(options: ProfileOptions) -> None:
    """The per-op table, the per-conv table with its bounds, and what footnote 5's forecast asks
    of a grouped-conv kernel here, printed."""
    workload = Workload(options.model, options.setup, options.clip)
    x, y = workload.inputs(options.batch)
    train_step = workload.make_train_step() if options.train else None
    step = (lambda: train_step(x, y)) if options.train else (lambda: workload.infer_step(x))
    print_op_table(options, workload, step)
    rows = conv_table(workload, x, train=options.train)
    bounds = print_conv_table(options, rows)
    print_forecast(options, workload, step, rows)
    if options.against:
        other = achieved_rate(options.against, workload.setup, options.batch, options.train)
        print(f"{options.against} ({phase(options)} at its spec input, batch {options.batch}, this process): "
              f"{other:.1f} GMAC/s; {options.model}'s bounds are {bounds[0] / other:.2f}x (grouped convs) "
              f"and {bounds[1] / other:.2f}x (all convs) of it")


def phase(options: ProfileOptions) -> str:
    return "training step" if options.train else "inference"


def print_op_table(options: ProfileOptions, workload: Workload, step) -> None:
    for _ in range(2):
        step()
    device = options.setup.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        workload.synchronize()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"{options.model}, {phase(options)}, batch {options.batch}, {device} {options.setup.dtype}: "
          "per-op time over 2 steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=options.rows, max_name_column_width=36))


def print_conv_table(options: ProfileOptions, rows: list[tuple]) -> tuple[float, float]:
    """The per-conv table and the two bounds it sets: (grouped convs, all convs) GMAC/s."""
    total = sum(r[2] for r in rows)
    what = "forward + backward" if options.train else "forward"
    print(f"every convolution alone, {what}, batch {options.batch} ({total:.1f} ms per step in all)")
    print(f"{'kind':32s} {'kernel':>8s} {'ms':>8s} {'share':>6s} {'GMACs':>7s} {'GMAC/s':>7s}")
    for kind, kernel, ms, gmacs, rate in rows:
        print(f"{kind:32s} {kernel:>8s} {ms:8.1f} {ms / total:6.0%} {gmacs:7.2f} {rate:7.1f}")
    factor = speed.TRAIN_MACS_FACTOR if options.train else 1
    step_gmacs = factor * count_macs(options.model, options.clip).gmacs * options.batch
    grouped_ms, bound = grouped_bound(rows, step_gmacs)
    if grouped_ms:
        print(f"bound: the grouped convs alone take {grouped_ms:.1f} ms per step, so even with every "
              f"other op free the step ({step_gmacs:.2f} GMACs) runs at most {bound:.1f} GMAC/s")
    # every conv, pointwise and dense included: tighter where the grouped convs are not all
    conv_bound = step_gmacs / (total / 1e3)
    print(f"bound: all convs together take {total:.1f} ms per step, so with BatchNorm, ReLU, adds "
          f"and pooling free the step runs at most {conv_bound:.1f} GMAC/s")
    return bound, conv_bound


def print_forecast(options: ProfileOptions, workload: Workload, step, rows: list[tuple]) -> None:
    result = timing.time_step(step, workload.synchronize, min_run_time=1.0)
    dense = peak.peak_gmacs_per_s(options.setup.device, options.setup.dtype)["conv"]
    target = ledger.FOOTNOTE5_FORECAST.threshold
    ceiling, needed_ms, needed_rate = speedup_needed(result.median * 1e3, rows, target)
    print(f"forecast: the step takes {result.median * 1e3:.0f} ms (median, timed as the harness "
          f"does); with its grouped convs free it would be {ceiling:.2f}x faster")
    if needed_ms > 0:
        print(f"forecast: a {target}x faster step needs the grouped convs in {needed_ms:.0f} ms: "
              f"{needed_rate:.1f} GMAC/s, {needed_rate / dense:.2f}x this machine's dense 3x3x3 "
              f"conv ({dense:.1f} GMAC/s)")
    else:
        print(f"forecast: a {target}x faster step is out of reach of any grouped-conv kernel here "
              f"(Amdahl: the rest of the step alone takes {result.median * 1e3 / ceiling:.0f} ms)")
