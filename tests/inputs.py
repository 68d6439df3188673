"""Small inputs every registered model accepts, for tests that run each of them."""

import torch

import models


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
