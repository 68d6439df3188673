"""Measure what models cost: ``python benchmarks/run.py --models mfnet,i3d``.

Each model is measured at its spec's input (the paper's) unless ``--clip`` overrides it, under
one setup (device, dtype, memory format, compile, kernels), into the append-only store in
``--results``. A failure in one model or measurement becomes an ``error`` row and the sweep
goes on. Bad input is refused with one line and exit status 2; exit status 1 means some rows
are errors. The work is in ``benchmarks/runner/``.
"""

import sys

from benchmarks import runner


def main(argv: list[str] | None = None) -> int:
    return runner.run(runner.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
