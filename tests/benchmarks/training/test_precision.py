"""Mixed precision and memory format in training (benchmarks/training/precision.py): bf16 autocast
and channels-last on the CPU, fp16 with a gradient scaler on CUDA."""


import pytest
import torch

from benchmarks import train
from tests.benchmarks.training.helpers import final, motion_run, rows


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
