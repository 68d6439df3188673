"""Whole training runs (benchmarks/training/run.py) on generated data in each official layout:
multi-view evaluation, determinism, fine-tuning and evaluating a checkpoint, splits and seeds,
ImageNet folders, corrupt test sets, unknown classes."""


import pytest
import torch

import models
from benchmarks import train
from benchmarks.data import datasets
from benchmarks.reporting.render import render
from benchmarks.store import read_csv
from tests import videos
from tests.benchmarks.training.helpers import TINY, TINY_MOTION, curve, final, rows

pytestmark = pytest.mark.slow  # whole training runs on generated datasets


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
        render(tmp_path / "results", tmp_path / "report")
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
    render(tmp_path / "r", tmp_path / "report")
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
    render(tmp_path / "r", tmp_path / "report")
    table1 = (tmp_path / "report" / "README.md").read_text().split("Accuracy in Table 1")[1]
    line = next(row for row in table1.splitlines() if row.startswith("| MF-Net 2D | ImageNet-1k"))
    measured = f"{top1['value'].iloc[0]:.1f}"
    assert f"| {measured} |" in line and "| 1×1 |" in line and "trained here" in line


def train_with_every_video_corrupt(tmp_path, part: str, epochs: int):
    """(exit status, rows) of a training run on a folder dataset whose ``part`` never decodes."""
    root = videos.folder(tmp_path / "data")
    for path in (root / part).rglob("*.mp4"):
        path.write_bytes(b"garbage")
    code = train.main(["--model", "mfnet", "--dataset", "folder", "--root", str(root), *TINY,
                       "--epochs", str(epochs), "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")])
    return code, rows(tmp_path / "r")


def test_an_all_corrupt_test_set_stores_an_error_row_and_keeps_the_training_rows(tmp_path):
    code, frame = train_with_every_video_corrupt(tmp_path, "val", epochs=1)
    assert code == 1
    error = frame[frame["status"] == "error"].set_index("metric")
    assert sorted(error.index) == ["top1_video", "val_top1"]  # the val folder is the test set too
    assert "no test video" in error.loc["top1_video", "error"]
    assert "no validation clip could be decoded (" in error.loc["val_top1", "error"]
    assert {"train_loss", "clips_seen", "skipped_videos"} <= set(frame[frame["status"] == "ok"]["metric"])


def test_training_on_data_that_never_decodes_is_an_error_not_an_ok_row_with_zeros(tmp_path):
    code, frame = train_with_every_video_corrupt(tmp_path, "train", epochs=2)
    assert code == 1
    assert set(frame[frame["status"] == "ok"]["metric"]) == {"val_top1", "skipped_videos"}  # nothing trained
    ok = frame[frame["status"] == "ok"].set_index("metric")
    errors = frame[frame["status"] == "error"].set_index("metric")
    skipped = int(ok.loc["skipped_videos", "value"])
    assert skipped > 0
    for metric in ("train_loss", "train_top1", "epoch_clips_per_s"):
        assert errors.loc[metric, "error"] == f"no training clip could be decoded ({skipped} videos skipped)"
    assert errors.loc["top1_video", "error"].startswith("not trained: no training clip could be decoded")
    assert frame["epoch"].max() == 0  # it stopped after the epoch that decoded nothing


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
