"""Resume (benchmarks/training/state.py): a killed run continues with the numbers an uninterrupted
run gives, writes each row once whatever the kill point, and refuses other settings or a bad
``last.pt`` in one line."""


import subprocess
import sys

import pytest
import torch

from benchmarks import train
from benchmarks.store import ResultsStore
from benchmarks.training import run as training_run
from tests.benchmarks.training.helpers import TINY_MOTION, curve, motion_run, rows, run_train

pytestmark = pytest.mark.slow  # whole runs, killed and resumed


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--model", "mfnet", "--clip", "8,32,32"] + TINY_MOTION
    assert train.main(args + ["--results", str(tmp_path / "full"), "--out", str(tmp_path / "full")]) == 0

    real_epoch, calls = training_run.run_epoch, []

    def killed_in_second_epoch(*a, **kw):
        if kw.get("train"):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if the process were killed mid-epoch
        return real_epoch(*a, **kw)

    monkeypatch.setattr(training_run, "run_epoch", killed_in_second_epoch)
    out = ["--results", str(tmp_path / "cut"), "--out", str(tmp_path / "cut")]
    assert train.main(args + out) == 130  # Ctrl-C: a one-line hint, exit 130
    monkeypatch.setattr(training_run, "run_epoch", real_epoch)
    assert train.main(args + out + ["--resume"]) == 0
    for metric in ("train_loss", "train_top1", "val_top1", "top1_video"):
        assert curve(tmp_path / "cut", metric) == curve(tmp_path / "full", metric), metric
    full = torch.load(tmp_path / "full" / "mfnet-motion-s0" / "last.pt", weights_only=True)["model"]
    cut = torch.load(tmp_path / "cut" / "mfnet-motion-s0" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_keeps_counters_and_writes_each_row_once_whatever_the_kill_point(tmp_path, monkeypatch):
    assert train.main(motion_run(tmp_path, "full")) == 0
    full = rows(tmp_path / "full")

    # killed after the first epoch's checkpoint, before its rows reached the store
    real_record_append = ResultsStore.append
    calls = []

    def killed_after_checkpoint(self, new_rows, *a, **kw):
        if any(r.epoch == 0 for r in new_rows):
            calls.append(1)
            raise KeyboardInterrupt
        return real_record_append(self, new_rows, *a, **kw)

    monkeypatch.setattr(ResultsStore, "append", killed_after_checkpoint)
    assert train.main(motion_run(tmp_path, "cut")) == 130  # Ctrl-C: a one-line hint, exit 130
    monkeypatch.setattr(ResultsStore, "append", real_record_append)
    first = torch.load(tmp_path / "cut" / "mfnet-motion-s0" / "last.pt", weights_only=True)["counters"]
    assert first["clips_seen"] == 8 and first["train_seconds"] > 0
    assert train.main(motion_run(tmp_path, "cut", "--resume")) == 0
    cut = rows(tmp_path / "cut")
    assert len(cut) == len(full)  # every row once
    for metric in ("train_loss", "val_top1", "top1_video", "clips_seen", "epochs_completed"):
        assert (sorted(cut[cut["metric"] == metric]["value"])
                == sorted(full[full["metric"] == metric]["value"])), metric
    seconds = cut[cut["metric"] == "train_seconds"]["value"].iloc[0]
    assert seconds > first["train_seconds"]  # the first session's time is counted, not restarted
    # a finished run is not finished again
    assert train.main(motion_run(tmp_path, "cut", "--resume")) == 0
    assert len(rows(tmp_path / "cut")) == len(full)


def test_resume_refuses_other_settings_and_names_them(tmp_path):
    assert train.main(motion_run(tmp_path, "a")) == 0
    proc = run_train(motion_run(tmp_path, "a", "--resume", "--lr", "0.01"), tmp_path)
    assert proc.returncode == 2 and "--lr 0.01" in proc.stderr and "0.005" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("damage", ["garbage", "run_id"])
def test_a_bad_or_crafted_last_pt_is_one_line_and_writes_nothing_outside(tmp_path, damage):
    assert train.main(motion_run(tmp_path, "a", "--epochs", "1")) == 0
    last = tmp_path / "a" / "mfnet-motion-s0" / "last.pt"
    if damage == "garbage":
        last.write_bytes(b"not a checkpoint")
    else:
        state = torch.load(last, weights_only=True)
        state["run_id"] = "../../escaped"
        torch.save(state, last)
    proc = run_train(motion_run(tmp_path, "a", "--epochs", "1", "--resume"), tmp_path)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not list(tmp_path.rglob("escaped*"))


def test_resume_with_bf16_and_channels_last_gives_the_uninterrupted_numbers(tmp_path, monkeypatch):
    flags = ("--amp", "bf16", "--channels-last")
    assert train.main(motion_run(tmp_path, "full", *flags)) == 0
    real_epoch, calls = training_run.run_epoch, []

    def killed_in_second_epoch(*a, **kw):
        if kw.get("train"):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_epoch(*a, **kw)

    monkeypatch.setattr(training_run, "run_epoch", killed_in_second_epoch)
    assert train.main(motion_run(tmp_path, "cut", *flags)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(training_run, "run_epoch", real_epoch)
    assert train.main(motion_run(tmp_path, "cut", *flags, "--resume")) == 0
    full, cut = rows(tmp_path / "full"), rows(tmp_path / "cut")
    for metric in ("train_loss", "val_top1", "top1_video"):
        values = [sorted(f[f["metric"] == metric]["value"]) for f in (cut, full)]
        assert values[0] == values[1], metric


def test_a_second_training_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    folder = tmp_path / "a" / "mfnet-motion-s0"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(  # another training's hold on the folder, as ``holding`` takes it
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 4242 on elsewhere'); f.flush(); print('held', flush=True); "
         "time.sleep(120)", str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_train(motion_run(tmp_path, "a", "--epochs", "1"), tmp_path)
        assert proc.returncode == 2 and "is being trained into by pid 4242 on elsewhere" in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and not (folder / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train.main(motion_run(tmp_path, "a", "--epochs", "1")) == 0  # released with its holder
