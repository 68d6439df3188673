"""The model a run steps (benchmarks/training/model.py): compiled where asked, its checkpoints
under the plain module's keys."""


import torch

import models
from benchmarks import train
from tests.benchmarks.training.helpers import final, motion_run


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
