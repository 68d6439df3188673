"""Generate reports/ from results/: ``python benchmarks/report.py [--results DIR ...] [--out DIR]``.

Tables (``README.md``) set the paper's figures, read from the ledger, beside the values measured
at the same input; figures are PNG and SVG. The same results give byte-identical output. The
work is in ``benchmarks/reporting/``.
"""

import argparse
import sys
from pathlib import Path

import models
from benchmarks.reporting.render import ReportError, ReportOptions, render


def parse_args(argv: list[str] | None = None) -> ReportOptions:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.split(":")[0])
    p.add_argument("--results", default=[Path("results")], type=Path, nargs="+",
                   help="one store, or several (e.g. one per machine) merged into one report")
    p.add_argument("--out", default="reports", type=Path)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import the file or module that registers your models, as run.py did")
    a = p.parse_args(argv)
    try:
        for target in a.imports:
            models.import_models(target)
    except ValueError as exc:
        p.exit(2, f"report.py: error: {exc}\n")
    if a.out.exists() and not a.out.is_dir():
        p.exit(2, f"report.py: error: --out {a.out} is not a folder\n")
    return ReportOptions(tuple(a.results), a.out)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        render(options.results, options.out)
    except (OSError, ReportError) as exc:  # a store that cannot be read, nothing to show
        print(f"report.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {options.out}/README.md and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
