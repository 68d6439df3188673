"""C3D (Tran et al., ICCV 2015): eight 3x3x3 convolutions, five max-pools, three FC layers.

Our own implementation: no well-kept library ships it. Widths follow the C3D paper (Fig. 3);
pool5 has no padding, so a 16x112x112 clip leaves 512x1x3x3 = 4608 features for fc6. That is
the layout of the VMZ model zoo's C3D, whose published cost at 16x112x112 is the one the
MF-Net paper quotes in Table 4 (both figures: ``models/ledger.py``).
"""

from collections import OrderedDict

import torch
from torch import nn

# (name, output channels) of the eight convs; a pool follows conv1a, conv2a, conv3b, conv4b, conv5b
CONVS = (("conv1a", 64), ("conv2a", 128), ("conv3a", 256), ("conv3b", 256),
         ("conv4a", 512), ("conv4b", 512), ("conv5a", 512), ("conv5b", 512))
POOL_AFTER = {"conv1a": (1, 2, 2), "conv2a": 2, "conv3b": 2, "conv4b": 2, "conv5b": 2}


class C3D(nn.Module):
    def __init__(self, *, num_classes: int = 400, dropout: float = 0.5):
        super().__init__()
        layers = OrderedDict()
        num_in = 3
        for name, num_out in CONVS:
            layers[name] = nn.Conv3d(num_in, num_out, 3, padding=1)
            layers[f"{name}_relu"] = nn.ReLU(inplace=True)
            if name in POOL_AFTER:
                layers[f"pool{name[4]}"] = nn.MaxPool3d(POOL_AFTER[name], POOL_AFTER[name])
            num_in = num_out
        self.features = nn.Sequential(layers)
        # fc6 sees a 1x3x3 map at the paper's input; other clip sizes are pooled to it
        self.pool = nn.AdaptiveMaxPool3d((1, 3, 3))
        self.fc6 = nn.Linear(512 * 3 * 3, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.classifier = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W)
        x = self.pool(self.features(x)).flatten(1)
        x = self.dropout(self.relu(self.fc6(x)))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.classifier(x)


def c3d(*, num_classes: int = 400, **kwargs) -> C3D:
    return C3D(num_classes=num_classes, **kwargs)
