"""MF-Net's fiber convs timed one by one: ``python benchmarks/fiber_conv.py [--batch 4]``.

Each stage's 3x3x3 fiber conv (16 groups) on oneDNN (channels last and NCDHW), as fibers batched
into one ``bmm``, and on the suite's kernel, each checked against oneDNN's first; useful GMAC/s.
The work is in ``benchmarks/measure/fiber_convs.py``.
"""

import argparse
import sys

from benchmarks.machine import runtime
from benchmarks.measure.fiber_convs import print_rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fiber_conv.py", description=__doc__.split(":")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--min-run-time", type=float, default=1.0)
    a = p.parse_args(argv)
    if a.batch < 1 or not a.min_run_time > 0:
        p.exit(2, "fiber_conv.py: error: --batch and --min-run-time must be positive\n")
    runtime.keep_freed_memory()
    print_rates(a.batch, a.min_run_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
