"""``run.py``'s work: the options (``options.py``), the plan and what counts as done
(``plan.py``), one model's measurement (``measure.py``), the motion benchmark's protocol
(``accuracy.py``), the sweep (``sweep.py``) and its console summary (``summary.py``)."""

import datetime as dt
import sys
import tempfile
import traceback
from pathlib import Path

from benchmarks import runtimes
from benchmarks.runner.options import RunOptions, UsageError, parse_args, per_runtime
from benchmarks.runner.sweep import Sweep, console_for
from benchmarks.store import StoreError


def run(options: RunOptions) -> int:
    """Measure what ``options`` ask for, a sweep per runtime (``per_runtime``); the command's exit
    status: 0, 1 where some rows are errors, 2 for a store that cannot be written or nothing that
    could run, 130 on Ctrl-C, 3 for a crash (its trace kept). A runtime that cannot run this
    device or dtype is skipped with one line."""
    status, ran = 0, 0
    for sweep_options in per_runtime(options):
        why = runtimes.why_not(sweep_options.runtime, options.device, options.dtype)
        if why:
            print(f"run.py: {sweep_options.runtime}: skipped: {why}", file=sys.stderr)
            continue
        ran += 1
        status = max(status, run_sweep(sweep_options))
        if status >= 2:
            break
    return status if ran else 2


def run_sweep(options: RunOptions) -> int:
    """One sweep, under one runtime."""
    try:
        sweep = Sweep(options, console_for())
    except OSError as exc:
        reason = exc if isinstance(exc, StoreError) else exc.strerror or exc
        print(f"run.py: error: cannot write results to {options.results}: {reason}", file=sys.stderr)
        return 2
    try:
        return sweep.run()
    except KeyboardInterrupt:
        print("run.py: interrupted; every finished measurement is stored (each append is atomic): "
              "run the same command again to measure the rest", file=sys.stderr)
        return 130
    except OSError as exc:  # a store that became unreadable or unwritable mid-run
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # a bug: its own status, the trace kept where the user can send it
        print(f"run.py: crashed; trace written to {write_crash_log(options.results)}", file=sys.stderr)
        return 3


def write_crash_log(results: str) -> Path:
    """The current exception's trace in ``<results>/crash-<time>.log`` (or the temp folder)."""
    name = f"crash-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
    for folder in (Path(results), Path(tempfile.gettempdir())):
        try:
            path = folder / name
            path.write_text(traceback.format_exc())
            return path
        except OSError:
            continue
    return Path("(nowhere: no folder was writable)")


__all__ = ["RunOptions", "UsageError", "parse_args", "run"]
