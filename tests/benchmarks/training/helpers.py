"""What the training tests share: tiny runs, the rows they leave, and train.py run in-process."""

import contextlib
import io
from pathlib import Path
from typing import NamedTuple

from benchmarks import train
from benchmarks.store import read_csv

TINY = ["--clip", "8,32,32", "--batch-size", "2", "--workers", "0"]
MOTION = ["--model", "mfnet", "--dataset", "motion", "--clip", "8,32,32", "--train-size", "8",
          "--val-size", "4", "--batch-size", "4", "--epochs", "2"]
TINY_MOTION = ["--dataset", "motion", "--train-size", "8", "--val-size", "4", "--batch-size", "4",
               "--epochs", "2"]


def rows(results: Path):
    return read_csv(results / "measurements.csv")


def final(results: Path, metric: str = "top1_video"):
    frame = rows(results)
    return frame[(frame["metric"] == metric) & frame["epoch"].isna()]


def curve(results: Path, metric: str) -> list[float]:
    frame = rows(results)
    return frame[frame["metric"] == metric].sort_values("epoch")["value"].tolist()


def motion_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return MOTION + ["--results", str(tmp_path / name), "--out", str(tmp_path / name), *extra]


class Outcome(NamedTuple):
    returncode: int
    stderr: str


def run_train(args: list[str], tmp_path: Path) -> Outcome:
    """``train.py`` as the command line runs it, in this process (a subprocess per case
    would import torch a dozen times): its exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = train.main([*args, "--results", str(tmp_path / "r")])
        except SystemExit as exc:  # argparse's exit
            code = exc.code
    return Outcome(code, err.getvalue())
