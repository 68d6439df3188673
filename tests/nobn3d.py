"""A small 3D CNN without BatchNorm, registered from outside the suite (``--import``) for the
two-process DDP test: per-process batch statistics would legitimately differ between one
process and two, and a small model lets the loss move within the test's few steps."""

from torch import nn

import models


@models.register_model(input_shape=(3, 8, 32, 32), num_classes=6, display_name="NoBN3D (test)",
                       min_input=(3, 2, 8, 8), family="test")
def nobn3d(*, num_classes: int = 6, **kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv3d(3, 16, 3, (1, 2, 2), 1), nn.ReLU(inplace=True),
                         nn.Conv3d(16, 32, 3, 2, 1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, num_classes))
