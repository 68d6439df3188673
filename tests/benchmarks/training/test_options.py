"""``train.py``'s command line (benchmarks/training/options.py): what cannot mean anything is one
line and exit status 2."""

import subprocess
import sys

import pytest
import torch

from tests.benchmarks.training.helpers import run_train
from tests.paths import REPO


@pytest.mark.slow
def test_a_missing_dataset_root_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--model", "mfnet", "--dataset",
                           "ucf101", "--root", str(tmp_path / "nope"), "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


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


@pytest.mark.parametrize("args, message", [
    (["--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["--model-arg", "foo"], "--model-arg takes KEY=VALUE"),
    (["--model-arg", "colour=3"], "cannot build mfnet"),
])
def test_malformed_seeds_and_model_arguments_are_one_line(tmp_path, args, message):
    proc = run_train(["--model", "mfnet", *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0
