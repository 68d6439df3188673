"""Where a model's time goes: ``python benchmarks/op_profile.py --model mfnet [--batch 4] [--train]
[--against res3d]``.

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

It runs the same steps as the harness (``benchmarks/workload.py``), under the same settings.
"""

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import models
from benchmarks import runtime, speed
from benchmarks.cost import count_macs, layer_type
from benchmarks.run import parse_clip
from benchmarks.workload import DTYPES, Setup, Workload
from models import kernels, ledger

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
    result = speed.time_step(step, workload.synchronize, min_run_time=1.0)
    factor = speed.TRAIN_MACS_FACTOR if train else 1
    return factor * count_macs(name).gmacs * batch / result.median


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="op_profile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mfnet")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--clip", type=parse_clip, default=None, help="T,H,W (default: the spec's)")
    p.add_argument("--train", action="store_true", help="profile a training step, not inference")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--stock-kernels", action="store_true",
                   help="MF-Net's fiber convs and BatchNorm + ReLU on PyTorch's kernels, as "
                        "footnote 5 found them (default: on the suite's, models/fiber_kernel.py, "
                        "wherever it runs)")
    p.add_argument("--rows", type=int, default=15, help="rows of the per-op table")
    p.add_argument("--against", metavar="NAME",
                   help="also time this model's same step (at its spec input) and compare its "
                        "GMAC/s with the bound the grouped convs set, e.g. res3d")
    args = p.parse_args(argv)
    try:
        models.get_spec(args.model)
        if args.against:
            models.get_spec(args.against)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA GPU is available here")
    except ValueError as exc:
        p.exit(2, f"op_profile.py: error: {exc}\n")
    runtime.keep_freed_memory()
    setup = Setup(args.device, args.dtype, args.channels_last,
                  fiber_kernel=not args.stock_kernels and not kernels.why_not(args.device, args.dtype))
    print(f"fiber convs: {'suite kernel' if setup.fiber_kernel else 'stock kernels'}")
    workload = Workload(args.model, setup, args.clip)
    x, y = workload.inputs(args.batch)
    train_step = workload.make_train_step() if args.train else None
    step = (lambda: train_step(x, y)) if args.train else (lambda: workload.infer_step(x))
    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        workload.synchronize()
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    phase = "training step" if args.train else "inference"
    print(f"{args.model}, {phase}, batch {args.batch}, {args.device} {args.dtype}: per-op time over 2 steps")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=36))
    rows = conv_table(workload, x, train=args.train)
    total = sum(r[2] for r in rows)
    what = "forward + backward" if args.train else "forward"
    print(f"every convolution alone, {what}, batch {args.batch} ({total:.1f} ms per step in all)")
    print(f"{'kind':32s} {'kernel':>8s} {'ms':>8s} {'share':>6s} {'GMACs':>7s} {'GMAC/s':>7s}")
    for kind, kernel, ms, gmacs, rate in rows:
        print(f"{kind:32s} {kernel:>8s} {ms:8.1f} {ms / total:6.0%} {gmacs:7.2f} {rate:7.1f}")
    factor = speed.TRAIN_MACS_FACTOR if args.train else 1
    step_gmacs = factor * count_macs(args.model, args.clip).gmacs * args.batch
    grouped_ms, bound = grouped_bound(rows, step_gmacs)
    if grouped_ms:
        print(f"bound: the grouped convs alone take {grouped_ms:.1f} ms per step, so even with every "
              f"other op free the step ({step_gmacs:.2f} GMACs) runs at most {bound:.1f} GMAC/s")
    # every conv, pointwise and dense included: tighter where the grouped convs are not all
    conv_bound = step_gmacs / (total / 1e3)
    print(f"bound: all convs together take {total:.1f} ms per step, so with BatchNorm, ReLU, adds "
          f"and pooling free the step runs at most {conv_bound:.1f} GMAC/s")
    result = speed.time_step(step, workload.synchronize, min_run_time=1.0)
    dense = speed.peak_gmacs_per_s(args.device, args.dtype)["conv"]
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
    if args.against:
        other = achieved_rate(args.against, workload.setup, args.batch, args.train)
        print(f"{args.against} ({phase} at its spec input, batch {args.batch}, this process): "
              f"{other:.1f} GMAC/s; {args.model}'s bounds are {bound / other:.2f}x (grouped convs) "
              f"and {conv_bound / other:.2f}x (all convs) of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
