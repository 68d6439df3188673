"""DistributedDataParallel (benchmarks/training/distributed.py): two gloo processes give one
process's loss curve, and channels-last MF-Net's gradients arrive in DDP's bucket layout."""

import os
import subprocess
import sys

import pytest

from tests.benchmarks.training.helpers import TINY_MOTION, curve
from tests.paths import REPO

pytestmark = pytest.mark.slow  # torchrun-style process groups


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
