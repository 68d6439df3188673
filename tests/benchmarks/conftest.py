"""The harness's tests see a quiet machine unless they simulate a load themselves: the harness
watches the real machine (other processes' CPU time, its peak around each timing) and marks what
it measured under load, and a test's verdicts must not depend on what else the CI machine runs
(tests/benchmarks/machine/test_contention.py measures the real meter)."""

import pytest
import torch
from torch import nn

import models
from benchmarks.machine import contention, disturbance
from benchmarks.runner import accuracy
from models import registry


class QuietMeter(contention.CpuMeter):
    def read(self):
        return contention.Contention(0.0, 0.0, 1.0, 2, 2)


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    monkeypatch.setattr(accuracy, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance.MachineWatch, "brief_peak", lambda self: None)


class Tiny3d(nn.Module):
    """A conv, a BatchNorm, a pooled head: what every runtime here must run alike."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3, 4)))


class Branchy(Tiny3d):
    """Control flow on a value: no exporter can trace it into one graph."""

    def forward(self, x):
        if x.sum() > 0:
            return super().forward(x)
        return super().forward(-x)


@pytest.fixture
def tiny_models(monkeypatch):
    """tiny3d and branchy3d registered for the test only."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name, cls in (("tiny3d", Tiny3d), ("branchy3d", Branchy)):
        models.register_model(lambda *, num_classes=5, cls=cls: cls(num_classes), name=name,
                              input_shape=(3, 4, 16, 16), num_classes=5, display_name=name)
    return ("tiny3d", "branchy3d")
