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
    if name == "s3d":
        return torch.randn(batch, 3, 16, 224, 224)
    if spec.is_video:
        frames = 2 if name.endswith("_frames") else 16
        return torch.randn(batch, 3, frames, 64, 64)
    return torch.randn(batch, 3, 64, 64)
