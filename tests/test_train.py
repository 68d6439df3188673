"""benchmarks/train.py: every dataset trains and evaluates; seeds, resume and DDP agree."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report, train
from benchmarks.results import read_csv
from tests import videos

REPO = Path(__file__).resolve().parent.parent
TINY_MOTION = ["--dataset", "motion", "--train-size", "8", "--val-size", "4", "--batch-size", "4",
               "--epochs", "2"]


def curve(results: Path, metric: str) -> list[float]:
    frame = read_csv(results / "measurements.csv")
    rows = frame[frame["metric"] == metric].sort_values("epoch")
    return rows["value"].tolist()


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "kinetics400", "folder"])
def test_one_epoch_and_a_multi_view_evaluation_on_each_dataset(tmp_path, name):
    root = getattr(videos, name)(tmp_path / name)
    code = train.main(["--model", "mfnet", "--dataset", name, "--root", str(root), "--clip", "8,32,32",
                       "--epochs", "1", "--batch-size", "2", "--test-clips", "2", "--test-crops", "3",
                       "--results", str(tmp_path / "results"), "--out", str(tmp_path / "runs")])
    assert code == 0
    frame = read_csv(tmp_path / "results" / "measurements.csv")
    metrics = frame.set_index("metric")
    assert {"train_loss", "train_top1", "val_top1", "top1_clip", "top1_video", "top5_video",
            "skipped_videos", "epochs_completed", "clips_seen", "epoch_clips_per_s"} <= set(frame["metric"])
    assert metrics.loc["top1_video", "views"] == "2x3"
    assert 0 <= metrics.loc["top1_video", "value"] <= 100
    skipped = {"ucf101": 1, "hmdb51": 2, "kinetics400": 2, "folder": 1}[name]  # bad x test clips
    assert metrics.loc["skipped_videos", "value"] >= skipped
    split = "-split1" if name in ("ucf101", "hmdb51") else ""
    assert (tmp_path / "runs" / f"mfnet-{name}{split}-s0" / "last.pt").exists()
    # results -> report: the measured top-1 lands beside the paper's, with its views
    table = {"ucf101": ("Table 4", "UCF-101"), "hmdb51": ("Table 4", "HMDB-51"),
             "kinetics400": ("Table 3", "Kinetics-400")}.get(name)
    if table:
        report.render(tmp_path / "results", tmp_path / "report")
        text = (tmp_path / "report" / "README.md").read_text().split(f"Accuracy in {table[0]}")[1]
        line = next(row for row in text.splitlines() if row.startswith(f"| MF-Net | {table[1]}"))
        measured = f"{metrics.loc['top1_video', 'value']:.1f}"
        assert f"| {measured} |" in line and "| 2×3 |" in line and "trained here" in line
        assert ("split 1 only" in line) == (name != "kinetics400")


def test_the_same_seed_gives_the_same_numbers(tmp_path):
    for run in ("a", "b"):
        assert train.main(["--model", "mfnet", "--clip", "8,32,32"] + TINY_MOTION + [
            "--results", str(tmp_path / run), "--out", str(tmp_path / run / "runs")]) == 0
    for metric in ("train_loss", "val_top1", "top1_video"):
        assert curve(tmp_path / "a", metric) == curve(tmp_path / "b", metric)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--model", "mfnet", "--clip", "8,32,32"] + TINY_MOTION
    assert train.main(args + ["--results", str(tmp_path / "full"), "--out", str(tmp_path / "full")]) == 0

    real_epoch, calls = train.run_epoch, []

    def killed_in_second_epoch(*a, **kw):
        if kw.get("train"):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if the process were killed mid-epoch
        return real_epoch(*a, **kw)

    monkeypatch.setattr(train, "run_epoch", killed_in_second_epoch)
    out = ["--results", str(tmp_path / "cut"), "--out", str(tmp_path / "cut")]
    assert train.main(args + out) == 130  # Ctrl-C: a one-line hint, exit 130
    monkeypatch.setattr(train, "run_epoch", real_epoch)
    assert train.main(args + out + ["--resume"]) == 0
    for metric in ("train_loss", "train_top1", "val_top1", "top1_video"):
        assert curve(tmp_path / "cut", metric) == curve(tmp_path / "full", metric), metric
    full = torch.load(tmp_path / "full" / "mfnet-motion-s0" / "last.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut" / "mfnet-motion-s0" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_two_gloo_processes_give_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    # a model without BatchNorm, whose per-process statistics would legitimately differ
    args = ["--import", "tests/nobn3d.py", "--model", "nobn3d", "--clip", "8,32,32"] + TINY_MOTION
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "benchmarks/train.py", *args, "--results", str(tmp_path / "one"),
                             "--out", str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29533", "benchmarks/train.py", *args,
                             "--results", str(tmp_path / "two"), "--out", str(tmp_path / "two")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = curve(tmp_path / "one", "train_loss"), curve(tmp_path / "two", "train_loss")
    assert len(one) == len(two) == 2 and abs(one[1] - one[0]) > 1e-3  # the weights moved
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    assert curve(tmp_path / "two", "val_top1") == curve(tmp_path / "one", "val_top1")
    env_files = list((tmp_path / "two" / "runs").glob("*.json"))
    assert len(env_files) == 1  # only rank 0 writes


def test_a_missing_dataset_root_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--model", "mfnet", "--dataset",
                           "ucf101", "--root", str(tmp_path / "nope"), "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_warm_up_counts_epochs_of_data_under_a_time_budget_too():
    timed = train.Config(model="mfnet", epochs=1000, time_budget=60.0, warmup_epochs=0.5,
                         schedule="cosine")
    # a quarter of an epoch in, a few seconds into the budget: still warming up, at half the rate
    assert train.lr_factor(timed, progress=0.01, epoch=0.25) == pytest.approx(
        0.5 * 0.5 * (1 + math.cos(math.pi * 0.01)))
    assert train.lr_factor(timed, progress=0.5, epoch=2.0) == pytest.approx(0.5)  # cosine by the clock
    # a slow model a tenth of an epoch into the budget still warms up by the clock: it ends at
    # MAX_WARMUP_SHARE of the budget whatever the epochs, not after half an epoch it never sees
    share = train.MAX_WARMUP_SHARE
    assert train.lr_factor(timed, progress=share / 2, epoch=0.01) == pytest.approx(
        0.5 * 0.5 * (1 + math.cos(math.pi * share / 2)))
    assert train.lr_factor(timed, progress=share, epoch=0.1) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * share)))
    stepped = train.Config(model="mfnet", epochs=30, schedule="step", decay_epochs=(10, 20), warmup_epochs=0)
    assert [train.lr_factor(stepped, e / 30, e) for e in (0, 10, 25)] == pytest.approx([1, 0.1, 0.01])


def test_ddp_gets_gradients_in_its_buckets_layout_from_channels_last_mfnet(tmp_path):
    args = ["--model", "mfnet", "--clip", "8,32,32", "--dataset", "motion", "--train-size", "8",
            "--val-size", "4", "--batch-size", "4", "--epochs", "1"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29534", "benchmarks/train.py", *args,
                           "--results", str(tmp_path), "--out", str(tmp_path)],
                          cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Grad strides do not match" not in proc.stderr


def test_the_config_defaults_are_its_default_presets():
    defaults = train.Config(model="mfnet")
    assert defaults.dataset == "motion" and defaults.preset == "motion"
    for key, value in train.PRESETS["motion"].items():
        assert getattr(defaults, key) == value, key
