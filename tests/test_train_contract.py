"""What train.py promises a user with real data: fine-tuning, provenance, splits and seeds,
resume that keeps its numbers, and one-line errors for input that cannot mean anything."""

import contextlib
import io
import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import models
from benchmarks import datasets, report, train
from benchmarks.results import read_csv
from tests import videos

TINY = ["--clip", "8,32,32", "--batch-size", "2", "--workers", "0"]
MOTION = ["--model", "mfnet", "--dataset", "motion", "--clip", "8,32,32", "--train-size", "8",
          "--val-size", "4", "--batch-size", "4", "--epochs", "2"]


def rows(results: Path):
    return read_csv(results / "measurements.csv")


def final(results: Path, metric: str = "top1_video"):
    frame = rows(results)
    return frame[(frame["metric"] == metric) & frame["epoch"].isna()]


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return videos.ucf101(tmp_path_factory.mktemp("ucf"))


def test_a_kinetics_checkpoint_fine_tunes_on_a_two_class_ucf101_layout(tmp_path, ucf, capsys):
    source = models.create_model("mfnet")  # the authors' 3D format: module. prefix, 400 classes
    path = tmp_path / "MFNet3D_Kinetics-400_72.8.pth"
    torch.save({"epoch": 0, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    code = train.main(["--model", "mfnet", "--dataset", "ucf101", "--root", str(ucf), *TINY,
                       "--epochs", "1", "--checkpoint", str(path), "--results", str(tmp_path / "r"),
                       "--out", str(tmp_path / "runs")])
    assert code == 0
    assert "new 2-class classifier" in capsys.readouterr().out
    top1 = final(tmp_path / "r")
    digest = models.checkpoint.file_digest(path)
    assert top1["weights"].tolist() == [f"finetuned:{path.name}@{digest}"]
    assert top1["dataset"].tolist() == ["ucf101/1"] and top1["seed"].tolist() == [0]


def test_a_model_evaluated_from_its_checkpoint_gives_the_numbers_it_had_after_training(tmp_path, ucf):
    out = ["--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")]
    common = ["--model", "mfnet", "--dataset", "ucf101", "--root", str(ucf), *TINY,
              "--test-clips", "2", "--test-crops", "3"]
    assert train.main(common + ["--epochs", "1"] + out) == 0
    last = tmp_path / "runs" / "mfnet-ucf101-split1-s0" / "last.pt"
    assert train.main(common + ["--eval-only", "--checkpoint", str(last)] + out) == 0
    frame = rows(tmp_path / "r")
    for metric in ("top1_clip", "top1_video", "top5_video"):
        trained, evaluated = frame[frame["metric"] == metric].sort_values("timestamp")["value"].tolist()[-2:]
        assert trained == pytest.approx(evaluated), metric
    weights = final(tmp_path / "r")["weights"].tolist()
    assert weights[0] == "trained" and weights[1].startswith("file:last.pt@")


def test_split_all_runs_the_three_splits_and_seeds_repeat_them(tmp_path, ucf):
    code = train.main(["--model", "mfnet", "--dataset", "ucf101", "--root", str(ucf), *TINY,
                       "--epochs", "1", "--split", "all", "--seeds", "0,1",
                       "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")])
    assert code == 0
    top1 = final(tmp_path / "r")
    assert sorted(zip(top1["dataset"], top1["seed"])) == [
        (f"ucf101/{k}", s) for k in (1, 2, 3) for s in (0, 1)]
    # run again with --resume: every split and seed is finished, nothing is added
    before = len(rows(tmp_path / "r"))
    assert train.main(["--model", "mfnet", "--dataset", "ucf101", "--root", str(ucf), *TINY,
                       "--epochs", "1", "--split", "all", "--seeds", "0,1", "--resume",
                       "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")]) == 0
    assert len(rows(tmp_path / "r")) == before
    # and the report puts the three-split mean over two seeds into Table 4
    report.render(tmp_path / "r", tmp_path / "report")
    table4 = (tmp_path / "report" / "README.md").read_text().split("Accuracy in Table 4")[1]
    line = next(row for row in table4.splitlines() if row.startswith("| MF-Net | UCF-101"))
    assert "| 1×1 | 1, 2, 3 | 2 | trained here |" in line
    assert "**differs**" in line or "reproduced" in line


def test_imagenet_folders_train_and_evaluate_with_one_centre_crop(tmp_path):
    root = videos.imagenet(tmp_path / "imagenet")
    code = train.main(["--model", "mfnet2d", "--dataset", "imagenet", "--root", str(root),
                       "--clip", "32,32", "--batch-size", "2", "--workers", "0", "--epochs", "1",
                       "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")])
    assert code == 0
    top1 = final(tmp_path / "r")
    assert top1["dataset"].tolist() == ["imagenet"] and top1["clip"].tolist() == ["32x32"]
    assert top1["views"].tolist() == ["1x1"]
    skipped = final(tmp_path / "r", "skipped_videos")["value"].tolist()
    assert skipped == [1]  # the broken JPEG, skipped and counted
    val, classes = datasets.build("imagenet", root, split=1, train=False,
                                  config=datasets.ClipConfig(crop=32))
    assert classes == ["n01440764", "n01443537"] and val[0][0].shape == (3, 32, 32)
    # results -> report: Table 1 shows the measured top-1 and top-5 beside the paper's
    report.render(tmp_path / "r", tmp_path / "report")
    table1 = (tmp_path / "report" / "README.md").read_text().split("Accuracy in Table 1")[1]
    line = next(row for row in table1.splitlines() if row.startswith("| MF-Net 2D | ImageNet-1k"))
    measured = f"{top1['value'].iloc[0]:.1f}"
    assert f"| {measured} |" in line and "| 1×1 |" in line and "trained here" in line


def test_an_all_corrupt_test_set_stores_an_error_row_and_keeps_the_training_rows(tmp_path):
    root = videos.folder(tmp_path / "data")
    for path in (root / "val").rglob("*.mp4"):
        path.write_bytes(b"garbage")
    code = train.main(["--model", "mfnet", "--dataset", "folder", "--root", str(root), *TINY,
                       "--epochs", "1", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")])
    assert code == 1
    frame = rows(tmp_path / "r")
    error = frame[frame["status"] == "error"]
    assert error["metric"].tolist() == ["top1_video"] and "no test video" in error["error"].iloc[0]
    assert {"train_loss", "clips_seen", "skipped_videos"} <= set(frame["metric"])


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


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr nan is invalid"),
    (["--batch-size", "0"], "--batch-size 0 is invalid"),
    (["--train-size", "0"], "--train-size 0 is invalid"),
    (["--time-budget", "-1"], "--time-budget -1.0 is invalid"),
    (["--test-clips", "0"], "--test-clips 0 is invalid"),
    (["--clip", "4,7,7"], "--clip 4,7,7 is too small"),
    (["--model", "c3d", "--clip", "8,32,32"], "does not fit c3d"),
    (["--clip", "8,32,48"], "must be equal"),
    (["--eval-only"], "--eval-only needs --checkpoint"),
    (["--amp", "fp16"], "--amp fp16 needs a CUDA GPU"),
    (["--split", "all"], "motion has one split"),
])
def test_values_that_cannot_mean_anything_are_one_line_and_exit_2(tmp_path, args, message):
    if args == ["--amp", "fp16"] and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = run_train(["--model", "mfnet", "--dataset", "motion", "--epochs", "1", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr[-1000:]
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "r" / "measurements.csv").exists()


def test_an_image_model_on_clips_is_refused_with_the_frame_variant_named(tmp_path):
    proc = run_train(["--model", "resnet18", "--dataset", "motion"], tmp_path)
    assert proc.returncode == 2 and "resnet18_frames" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_a_test_split_naming_an_unknown_class_is_an_error_and_a_missing_one_keeps_labels(tmp_path):
    root = videos.folder(tmp_path / "data")
    for path in (root / "val" / "left").iterdir():
        path.unlink()
    (root / "val" / "left").rmdir()  # val lacks "left": "right" keeps its training label, 1
    val, classes = datasets.build("folder", root, split=1, train=False, config=datasets.ClipConfig())
    assert classes == ["left", "right"] and {item.label for item in val.items} == {1}
    videos.video(root / "val" / "up" / "0.mp4")
    with pytest.raises(datasets.DatasetLayoutError, match="names class 'up'"):
        datasets.build("folder", root, split=1, train=False, config=datasets.ClipConfig())


# ---- resume ----

def motion_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return MOTION + ["--results", str(tmp_path / name), "--out", str(tmp_path / name), *extra]


def test_resume_keeps_counters_and_writes_each_row_once_whatever_the_kill_point(tmp_path, monkeypatch):
    assert train.main(motion_run(tmp_path, "full")) == 0
    full = rows(tmp_path / "full")

    # killed after the first epoch's checkpoint, before its rows reached the store
    real_record_append = train.ResultsStore.append
    calls = []

    def killed_after_checkpoint(self, new_rows, *a, **kw):
        if any(r.epoch == 0 for r in new_rows):
            calls.append(1)
            raise KeyboardInterrupt
        return real_record_append(self, new_rows, *a, **kw)

    monkeypatch.setattr(train.ResultsStore, "append", killed_after_checkpoint)
    assert train.main(motion_run(tmp_path, "cut")) == 130  # Ctrl-C: a one-line hint, exit 130
    monkeypatch.setattr(train.ResultsStore, "append", real_record_append)
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


def test_bf16_autocast_and_channels_last_train_on_the_cpu(tmp_path):
    assert train.main(motion_run(tmp_path, "a", "--epochs", "1", "--amp", "bf16", "--channels-last")) == 0
    top1 = final(tmp_path / "a")
    assert top1["dtype"].tolist() == ["bf16"] and top1["channels_last"].tolist() == [True]
    assert 0 <= top1["value"].iloc[0] <= 100


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_a_grad_scaler_trains_on_cuda(tmp_path):
    assert train.main(motion_run(tmp_path, "a", "--epochs", "1", "--amp", "fp16", "--channels-last")) == 0
    assert torch.isfinite(torch.tensor(rows(tmp_path / "a")["value"].dropna().tolist())).all()


def test_resume_with_bf16_and_channels_last_gives_the_uninterrupted_numbers(tmp_path, monkeypatch):
    flags = ("--amp", "bf16", "--channels-last")
    assert train.main(motion_run(tmp_path, "full", *flags)) == 0
    real_epoch, calls = train.run_epoch, []

    def killed_in_second_epoch(*a, **kw):
        if kw.get("train"):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_epoch(*a, **kw)

    monkeypatch.setattr(train, "run_epoch", killed_in_second_epoch)
    assert train.main(motion_run(tmp_path, "cut", *flags)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(train, "run_epoch", real_epoch)
    assert train.main(motion_run(tmp_path, "cut", *flags, "--resume")) == 0
    full, cut = rows(tmp_path / "full"), rows(tmp_path / "cut")
    for metric in ("train_loss", "val_top1", "top1_video"):
        values = [sorted(f[f["metric"] == metric]["value"]) for f in (cut, full)]
        assert values[0] == values[1], metric


def test_compile_wraps_the_model_and_checkpoints_keep_the_plain_keys(tmp_path, monkeypatch):
    compiled = []

    def spy(model, **kwargs):  # inductor on a CPU takes minutes; the wiring is what is tested
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", spy)
    assert train.main(motion_run(tmp_path, "a", "--epochs", "1", "--compile")) == 0
    assert len(compiled) == 1
    state = torch.load(tmp_path / "a" / "mfnet-motion-s0" / "last.pt", weights_only=True)["model"]
    assert set(state) == set(models.create_model("mfnet", num_classes=6).state_dict())
    assert final(tmp_path / "a")["compiled"].tolist() == [True]


def test_loaders_pin_memory_and_keep_workers_on_cuda_only():
    cfg = train.Config(model="mfnet", dataset="ucf101", workers=2)
    data = list(range(8))
    cuda, _ = train.loader(data, cfg, train=True, world=1, rank=0, batch_size=2, device=torch.device("cuda"))
    cpu, _ = train.loader(data, cfg, train=True, world=1, rank=0, batch_size=2, device=torch.device("cpu"))
    assert cuda.pin_memory and cuda.persistent_workers and cuda.num_workers == 2
    assert not cpu.pin_memory and not cpu.persistent_workers
    assert train.default_workers(train.Config(model="mfnet", dataset="ucf101")) == min(8, os.cpu_count())
    assert train.default_workers(train.Config(model="mfnet", dataset="motion")) == 0


@pytest.mark.parametrize("args, message", [
    (["--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["--model-arg", "foo"], "--model-arg takes KEY=VALUE"),
    (["--model-arg", "colour=3"], "cannot build mfnet"),
])
def test_malformed_seeds_and_model_arguments_are_one_line(tmp_path, args, message):
    proc = run_train(["--model", "mfnet", *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_the_epoch_progress_bar_reports_clips_per_second():
    bar = train.EpochProgress(enabled=True)
    with bar.epoch("epoch 1/1", total=2) as advance:
        advance(4)
        advance(4)
        task = bar.bar.tasks[0]
        assert task.completed == 2 and task.fields["rate"].endswith("clips/s")
        assert advance.clips == 8
