"""Where a model's time goes: ``python benchmarks/op_profile.py --model mfnet [--batch 4] [--train]
[--against res3d]``: torch.profiler's per-op table, every conv timed alone with the bounds the
grouped convs set, and what footnote 5's forecast asks of a grouped-conv kernel here. The work
is in ``benchmarks/measure/profile.py``."""

import argparse
import sys

import torch

import models
from benchmarks.machine import runtime
from benchmarks.measure.profile import ProfileOptions, print_profile
from benchmarks.measure.workload import DTYPES, Setup, parse_clip
from models import kernels


def parse_args(argv: list[str] | None = None) -> ProfileOptions:
    p = argparse.ArgumentParser(prog="op_profile.py", description=__doc__.split(":")[0])
    p.add_argument("--model", default="mfnet")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--clip", default=None, help="T,H,W (default: the spec's)")
    p.add_argument("--train", action="store_true", help="profile a training step, not inference")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--stock-kernels", action="store_true",
                   help="PyTorch's kernels, as footnote 5 found them (default: the suite's, models/kernels, "
                        "wherever they run)")
    p.add_argument("--rows", type=int, default=15, help="rows of the per-op table")
    p.add_argument("--against", metavar="NAME",
                   help="also time this model's same step (at its spec input) and compare its GMAC/s with the "
                        "bound the grouped convs set, e.g. res3d")
    a = p.parse_args(argv)
    try:
        models.get_spec(a.model)
        if a.against:
            models.get_spec(a.against)
        if a.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA GPU is available here")
        if a.batch < 1:
            raise ValueError(f"--batch {a.batch}: need a positive integer")
        clip = parse_clip(a.clip) if a.clip else None
        kernels.check_settings()
    except ValueError as exc:
        p.exit(2, f"op_profile.py: error: {exc}\n")
    suite = not a.stock_kernels and not kernels.why_not(a.device, a.dtype)
    setup = Setup(a.device, a.dtype, a.channels_last, fiber_kernel=suite)
    return ProfileOptions(a.model, a.batch, clip, a.train, setup, a.rows, a.against)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    runtime.keep_freed_memory()
    print(f"kernels: {'the suite' if options.setup.fiber_kernel else 'stock'}")
    print_profile(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
