"""3D ResNeXt-101 32x4d with shortcut B (Hara et al., "Can spatiotemporal 3D CNNs retrace the
history of 2D CNNs and ImageNet?", CVPR 2018).

Our own implementation: torchvision and timm have no 3D ResNeXt. The layout follows Hara et al.'s
public code (kenshohara/3D-ResNets-PyTorch): a 7x7x7 stem with stride (1,2,2), a 3x3x3 max-pool
with stride 2, bottlenecks of width ``cardinality * planes / 32`` with expansion 2, and
"shortcut B" (a 1x1x1 conv + BN projection only where the shape changes).
"""

import torch
from torch import nn


class ResNeXtBottleneck3d(nn.Module):
    expansion = 2

    def __init__(self, num_in: int, planes: int, *, cardinality: int, stride: int = 1):
        super().__init__()
        mid = cardinality * (planes // 32)
        num_out = planes * self.expansion
        self.conv1 = nn.Conv3d(num_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, num_out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(num_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or num_in != num_out:  # shortcut B
            self.downsample = nn.Sequential(nn.Conv3d(num_in, num_out, 1, stride, bias=False),
                                            nn.BatchNorm3d(num_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNeXt3d(nn.Module):
    def __init__(self, *, depths=(3, 4, 23, 3), cardinality: int = 32, num_classes: int = 400):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, (1, 2, 2), 3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, 2, 1)
        num_in = 64
        for index, (planes, depth) in enumerate(zip((128, 256, 512, 1024), depths)):
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 and index > 0 else 1
                blocks.append(ResNeXtBottleneck3d(num_in, planes, cardinality=cardinality,
                                                  stride=stride))
                num_in = planes * ResNeXtBottleneck3d.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(num_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnext3d_101(*, num_classes: int = 400, **kwargs) -> ResNeXt3d:
    return ResNeXt3d(depths=(3, 4, 23, 3), cardinality=32, num_classes=num_classes, **kwargs)
