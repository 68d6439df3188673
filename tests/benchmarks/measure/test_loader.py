"""run.py --measure data: the loader per worker, against the earlier decoder and the model."""

import subprocess
import sys

import pytest

from benchmarks import run
from benchmarks.reporting.render import render
from benchmarks.store import read_csv
from tests import videos
from tests.paths import REPO

pytestmark = pytest.mark.slow  # run.py end to end on a generated dataset


def test_measure_data_times_both_decoders_and_the_model_and_the_report_shows_which_bounds(tmp_path):
    root = videos.folder(tmp_path / "data")
    code = run.main(["--measure", "data", "--dataset", "folder", "--root", str(root), "--clip", "8,32,32",
                     "--quick", "--results", str(tmp_path / "r"), "--batch-size", "2", "--workers", "2"])
    assert code == 0
    frame = read_csv(tmp_path / "r" / "measurements.csv")
    frame = frame[frame["model"] != "_machine"]  # the run's own peak RSS
    values = {(m, p): v for m, p, v in zip(frame["metric"], frame["phase"], frame["value"])}
    for phase in ("train", "test"):
        ours, theirs = values[("loader_clips_per_s", phase)], values[("loader_clips_per_s_baseline", phase)]
        assert ours > 0 and theirs > 0
        assert values[("loader_speedup", phase)] == ours / theirs
    model_row = frame[frame["metric"] == "model_train_clips_per_s"].iloc[0]
    assert model_row["value"] > 0 and "bounds an epoch" in model_row["note"]
    assert set(frame["dataset"]) == {"folder"} and set(frame["clip"]) == {"8x32x32"}
    render(tmp_path / "r", tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    line = next(row for row in text.split("## Data loading")[1].splitlines() if row.startswith("| folder"))
    assert "| 8x32x32 | MF-Net |" in line and "bounds an epoch" in line
    # measured once: a re-run skips it
    before = len(read_csv(tmp_path / "r" / "measurements.csv"))
    assert run.main(["--measure", "data", "--dataset", "folder", "--root", str(root), "--clip", "8,32,32",
                     "--quick", "--results", str(tmp_path / "r")]) == 0
    assert len(read_csv(tmp_path / "r" / "measurements.csv")) == before


def test_measure_data_without_a_dataset_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--measure", "data", "--results",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--measure data needs --dataset and --root" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
