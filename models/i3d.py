"""I3D: Inception-v1 with BatchNorm, inflated to 3D (Carreira & Zisserman, CVPR 2017).

Our own implementation: no well-kept library ships the RGB I3D of the paper. Layout, widths,
kernel and pooling sizes follow the I3D paper's Fig. 3 and its public release
(deepmind/kinetics-i3d), where every Inception branch is a Conv3d-BN-ReLU ("Unit3D") and the
3x3 branch called "5x5" in Inception-v1 is 3x3x3. MF-Net's Tables 3-4 cost it at 64x224x224.
"""

from collections import OrderedDict

import torch
from torch import nn


class Unit3D(nn.Sequential):
    """Conv3d (no bias) -> BN -> ReLU, "same" padding for odd kernels."""

    def __init__(self, num_in: int, num_out: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        padding = tuple(k // 2 for k in kernel)
        super().__init__(OrderedDict(
            conv=nn.Conv3d(num_in, num_out, kernel, stride, padding, bias=False),
            bn=nn.BatchNorm3d(num_out, eps=1e-3),
            relu=nn.ReLU(inplace=True),
        ))


class InceptionBlock(nn.Module):
    """Four branches, concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max-pool -> 1x1."""

    def __init__(self, num_in: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1_reduce, b1, b2_reduce, b2, b3 = widths
        self.branch0 = Unit3D(num_in, b0)
        self.branch1 = nn.Sequential(Unit3D(num_in, b1_reduce), Unit3D(b1_reduce, b1, (3, 3, 3)))
        self.branch2 = nn.Sequential(Unit3D(num_in, b2_reduce), Unit3D(b2_reduce, b2, (3, 3, 3)))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), Unit3D(num_in, b3))
        self.num_out = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


# Inception-v1 widths (Szegedy et al. 2015, Table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce,
# #5x5 (3x3 here), pool proj
INCEPTION_WIDTHS = OrderedDict(
    mixed_3b=(64, 96, 128, 16, 32, 32), mixed_3c=(128, 128, 192, 32, 96, 64),
    mixed_4b=(192, 96, 208, 16, 48, 64), mixed_4c=(160, 112, 224, 24, 64, 64),
    mixed_4d=(128, 128, 256, 24, 64, 64), mixed_4e=(112, 144, 288, 32, 64, 64),
    mixed_4f=(256, 160, 320, 32, 128, 128),
    mixed_5b=(256, 160, 320, 32, 128, 128), mixed_5c=(384, 192, 384, 48, 128, 128),
)
# max-pools placed before these blocks: (kernel, stride); I3D keeps time intact early on
POOL_BEFORE = {"mixed_3b": ((1, 3, 3), (1, 2, 2)), "mixed_4b": ((3, 3, 3), (2, 2, 2)),
               "mixed_5b": ((2, 2, 2), (2, 2, 2))}


class I3D(nn.Module):
    def __init__(self, *, num_classes: int = 400, dropout: float = 0.5):
        super().__init__()
        layers = OrderedDict(
            conv_1a=Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            pool_2a=nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            conv_2b=Unit3D(64, 64),
            conv_2c=Unit3D(64, 192, (3, 3, 3)),
        )
        num_in = 192
        for name, widths in INCEPTION_WIDTHS.items():
            if name in POOL_BEFORE:
                kernel, stride = POOL_BEFORE[name]
                # "same" padding as TensorFlow's: pad only where the kernel exceeds the stride
                padding = tuple((k - s + 1) // 2 for k, s in zip(kernel, stride))
                layers[f"pool_{name[-2:]}"] = nn.MaxPool3d(kernel, stride, padding, ceil_mode=True)
            layers[name] = InceptionBlock(num_in, widths)
            num_in = layers[name].num_out
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool3d(1)  # the release's (2,7,7) window at 64x224x224
        self.dropout = nn.Dropout(dropout)
        # the release's logits layer is a 1x1x1 conv with bias; a Linear is the same map
        self.classifier = nn.Linear(num_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W)
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def i3d(*, num_classes: int = 400, **kwargs) -> I3D:
    return I3D(num_classes=num_classes, **kwargs)
