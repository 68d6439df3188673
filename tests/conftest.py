import warnings

import pytest
import torch

import models

warnings.filterwarnings("ignore", category=FutureWarning, module="pytorchvideo")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def small_input(name: str, batch: int = 1) -> torch.Tensor:
    """A cheap input that every architecture accepts. torchvision's S3D pools with a fixed
    (2, 7, 7) window, so it needs 16 frames at 224 px."""
    spec = models.get_spec(name)
    if spec.min_input is not None and spec.min_input[-1] > 64:  # a fixed pooling window
        return torch.randn(batch, *spec.min_input)
    if spec.is_video:
        frames = 2 if spec.family == "frame" else 16
        return torch.randn(batch, 3, frames, 64, 64)
    return torch.randn(batch, 3, 64, 64)


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The harness watches the real machine (other processes' CPU time, its peak around each
    timing) and marks what it measured under load. A test's verdicts must not depend on what
    else the CI machine runs, so tests see a quiet machine unless they simulate a load
    themselves (tests/test_machine_watch.py measures the real meter)."""
    from benchmarks import contention, disturbance, run

    class QuietMeter(contention.CpuMeter):
        def read(self):
            return contention.Contention(0.0, 0.0, 1.0, 2, 2)

    monkeypatch.setattr(run, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance.MachineWatch, "brief_peak", lambda self: None)


@pytest.fixture(scope="session", autouse=True)
def fiber_kernel_built():
    """MF-Net runs on the suite's kernel by default, built on first use (about a minute, once
    per machine). Built here, before any test, so that no test's subprocess prints the first
    build's notice among the lines it checks or spends its timeout on it."""
    from models.kernels import build

    build.extension()
