"""Multi-Fiber Networks (Chen et al., "Multi-Fiber Networks for Video Recognition", ECCV 2018).

One fiber unit serves the 2D (image) and the 3D (video) network: a ``Geometry`` says whether
kernels have a temporal extent, and the temporal kernel sizes are passed in as data, the way
torchvision's video ResNet plugs in its conv builders.

The layer layout, unit wiring and initialisation follow the authors' public PyTorch release
(cypw/PyTorch-MFNet, commit 4d3434e) as described in ``docs/authors-release.md``:
every conv inside a unit is pre-activation (BN -> ReLU -> conv, no bias), the multiplexer is
``num_mid // 4`` wide and added residually, and there is no ReLU after the residual sum.
Module names are the authors' state-dict keys (``conv2.B01.conv_m1.conv.weight``), so their
released checkpoints load without renaming.

Departure from the release: the classifier pools with ``AdaptiveAvgPool`` instead of a fixed
(8, 7, 7) window, so clips of 8-64 frames and 32 px and up run; at 16x224x224 the two agree.
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Geometry:
    """Whether the network sees clips ``(N, C, T, H, W)`` (ndim=3) or images ``(N, C, H, W)``."""

    ndim: int

    def shape(self, t: int, h: int, w: int | None = None) -> tuple[int, ...]:
        """A kernel, stride or padding given as (t, h, w); the 2D net drops ``t``."""
        w = h if w is None else w
        return (t, h, w) if self.ndim == 3 else (h, w)

    def conv(self, num_in: int, num_out: int, kernel, stride, padding, groups: int = 1) -> nn.Module:
        conv = nn.Conv3d if self.ndim == 3 else nn.Conv2d
        return conv(num_in, num_out, kernel, stride, padding, groups=groups, bias=False)

    def bn(self, channels: int) -> nn.Module:
        return (nn.BatchNorm3d if self.ndim == 3 else nn.BatchNorm2d)(channels)


VIDEO = Geometry(ndim=3)
IMAGE = Geometry(ndim=2)


class BNReLUConv(nn.Sequential):
    """Pre-activation conv: BN -> ReLU -> conv without bias (keys ``bn.*``, ``conv.weight``)."""

    def __init__(self, geometry: Geometry, num_in: int, num_out: int, kernel=(1, 1, 1),
                 stride=(1, 1, 1), padding=(0, 0, 0), groups: int = 1):
        super().__init__(OrderedDict(
            bn=geometry.bn(num_in),
            relu=nn.ReLU(inplace=True),
            conv=geometry.conv(num_in, num_out, geometry.shape(*kernel), geometry.shape(*stride),
                               geometry.shape(*padding), groups=groups),
        ))


class MultiFiberUnit(nn.Module):
    """Fig. 1(d) and Fig. 3(b): a multiplexer across fibers, then N fiber-sliced convs.

    ``first`` marks a stage's first unit: its second conv is a dense 1x1(x1) and it has a
    projection shortcut ``conv_w1`` (the authors' release; the paper does not say).
    """

    def __init__(self, geometry: Geometry, num_in: int, num_mid: int, num_out: int, *,
                 groups: int, stride=(1, 1, 1), first: bool = False, temporal_kernel: int = 3,
                 multiplexer: bool = True):
        super().__init__()
        if multiplexer:
            num_ix = num_mid // 4  # the release uses num_mid / 4, not the prose's num_in / 4
            self.conv_i1 = BNReLUConv(geometry, num_in, num_ix)
            self.conv_i2 = BNReLUConv(geometry, num_ix, num_in)
        self.multiplexer = multiplexer
        self.conv_m1 = BNReLUConv(geometry, num_in, num_mid, (temporal_kernel, 3, 3), stride,
                                  (temporal_kernel // 2, 1, 1), groups=groups)
        if first:
            self.conv_m2 = BNReLUConv(geometry, num_mid, num_out)
            self.conv_w1 = BNReLUConv(geometry, num_in, num_out, stride=stride)
        else:
            self.conv_m2 = BNReLUConv(geometry, num_mid, num_out, (1, 3, 3),
                                      padding=(0, 1, 1), groups=groups)
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the adds go into the convs' outputs, fresh tensors no backward needs: no new block per
        # add, which at the throughput batch would be mapped and page-faulted afresh every step
        h = self.conv_i2(self.conv_i1(x)).add_(x) if self.multiplexer else x
        shortcut = self.conv_w1(x) if self.first else x
        return self.conv_m2(self.conv_m1(h)).add_(shortcut)


class MFNet(nn.Module):
    """Table 2's network. Defaults are the 3D MF-Net; ``geometry=IMAGE`` gives the 2D one."""

    def __init__(self, *, geometry: Geometry = VIDEO, num_classes: int = 400,
                 stem_channels: int = 16, stem_kernel=(3, 5, 5),
                 widths=(96, 192, 384, 768), depths=(3, 4, 6, 3), groups: int = 16,
                 multiplexer: bool = True, temporal_strides=(2, 1, 1, 1), dropout: float = 0.0,
                 channels_last: bool = True):
        super().__init__()
        # channels_last: the input is made channels-last on entry, the fast layout for fiber
        # (grouped) convs on oneDNN, cuDNN and the suite's kernels (16x224x224 inference at batch
        # 1 went from 225 ms to 124 ms here). The math, the parameters and the checkpoint keys are
        # the same; channels_last=False is the plain reference path the fast one is tested against.
        self.memory_format = ((torch.channels_last_3d if geometry.ndim == 3 else torch.channels_last)
                              if channels_last else torch.contiguous_format)
        padding = tuple(k // 2 for k in stem_kernel)
        self.conv1 = nn.Sequential(OrderedDict(
            conv=geometry.conv(3, stem_channels, geometry.shape(*stem_kernel),
                               geometry.shape(1, 2), geometry.shape(*padding)),
            bn=geometry.bn(stem_channels),
            relu=nn.ReLU(inplace=True),
        ))
        pool = nn.MaxPool3d if geometry.ndim == 3 else nn.MaxPool2d
        self.maxpool = pool(geometry.shape(1, 3), geometry.shape(1, 2), geometry.shape(0, 1))
        num_in = stem_channels
        for index, (width, depth, t_stride) in enumerate(zip(widths, depths, temporal_strides)):
            spatial_stride = 1 if index == 0 else 2
            units = OrderedDict()
            for i in range(depth):
                stride = (t_stride, spatial_stride, spatial_stride) if i == 0 else (1, 1, 1)
                units[f"B{i + 1:02d}"] = MultiFiberUnit(
                    geometry, num_in, width, width, groups=groups, stride=stride, first=i == 0,
                    multiplexer=multiplexer)
                num_in = width
            self.add_module(f"conv{index + 2}", nn.Sequential(units))
        self.num_stages = len(widths)
        self.tail = nn.Sequential(OrderedDict(bn=geometry.bn(num_in), relu=nn.ReLU(inplace=True)))
        pool = nn.AdaptiveAvgPool3d if geometry.ndim == 3 else nn.AdaptiveAvgPool2d
        self.globalpool = pool(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(num_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, T, H, W) for the 3D net, (N, 3, H, W) for the 2D one
        x = self.maxpool(self.conv1(x.contiguous(memory_format=self.memory_format)))
        for index in range(self.num_stages):
            x = getattr(self, f"conv{index + 2}")(x)
        x = self.globalpool(self.tail(x)).flatten(1)
        return self.classifier(self.dropout(x))


class MFInvertedResidual(nn.Module):
    """MobileNet-v2's inverted residual with the MF unit embedded (Table 1, "MF embedded").

    The paper gives no design, only the cost (6.0 M, 578 M). Here, following Section 3.1, both
    1x1 convs are sliced into ``groups`` fibers, a multiplexer (width ``hidden // 4``) joins the
    fibers before slicing, and the depthwise 3x3 is kept. Conv -> BN -> ReLU6 as in MobileNet-v2.
    """

    def __init__(self, num_in: int, num_out: int, *, stride: int, expand: int, groups: int,
                 mux_div: int = 4):
        super().__init__()
        hidden = num_in * expand

        def conv_bn(cin, cout, kernel=1, stride=1, groups=1, act=True):
            layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                      nn.BatchNorm2d(cout)]
            return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)

        fibers = groups if num_in % groups == 0 and hidden % groups == 0 else 1
        num_ix = max(hidden // mux_div, 8)
        self.mux = nn.Sequential(conv_bn(num_in, num_ix), conv_bn(num_ix, num_in, act=False))
        self.expand = conv_bn(num_in, hidden, groups=fibers) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        out_fibers = fibers if num_out % fibers == 0 else 1
        self.project = conv_bn(hidden, num_out, groups=out_fibers, act=False)
        self.residual = stride == 1 and num_in == num_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.mux(x)
        h = self.project(self.depthwise(self.expand(h)))
        return x + h if self.residual else h


class MobileNetV2MF(nn.Module):
    """MobileNet-v2 (Sandler et al. 2018, Table 2 layout) at a width multiplier, MF units inside."""

    # (expansion, channels, repeats, stride) from the MobileNet-v2 paper's Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, *, num_classes: int = 1000, width: float = 1.4, groups: int = 2,
                 expansion: int = 6, mux_div: int = 4, last_channels: int = 1792):
        super().__init__()

        def round8(c):  # MobileNet-v2 rounds every width to a multiple of 8
            return max(8, int(c + 4) // 8 * 8)

        num_in = round8(32 * width)
        layers = [nn.Conv2d(3, num_in, 3, 2, 1, bias=False), nn.BatchNorm2d(num_in),
                  nn.ReLU6(inplace=True)]
        for t, channels, repeats, stride in self.SETTINGS:
            num_out = round8(channels * width)
            expand = 1 if t == 1 else expansion
            for i in range(repeats):
                layers.append(MFInvertedResidual(num_in, num_out, stride=stride if i == 0 else 1,
                                                 expand=expand, groups=groups, mux_div=mux_div))
                num_in = num_out
        layers += [nn.Conv2d(num_in, last_channels, 1, bias=False), nn.BatchNorm2d(last_channels),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))  # (N, C)
        return self.classifier(x)


def init_weights(model: nn.Module) -> None:
    """The release's initialisation: Xavier-uniform conv and linear weights, zero biases, BN 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---- variant builders: each a few lines of data, as torchvision's r3d_18 / r2plus1d_18 ----

def mfnet3d(*, num_classes: int = 400, **kwargs) -> MFNet:
    """Table 2's 3D MF-Net, at 16x224x224 (its published cost: ``models/ledger.py``); the
    registry's ``mfnet`` is this on its fast path (``models/fast_path.py``)."""
    return MFNet(geometry=VIDEO, num_classes=num_classes, **kwargs)


def mfnet2d(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 2, 2D MF-Net (N=16): the 3D net with every temporal extent and stride set to 1."""
    return MFNet(geometry=IMAGE, num_classes=num_classes, **kwargs)


def mfnet2d_n12(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 1, N=12. Unpublished: stem, widths and depths chosen to match its cost (see spec)."""
    return mfnet2d(num_classes=num_classes, groups=12, stem_channels=12,
                   widths=(96, 192, 384, 720), depths=(3, 4, 5, 3), **kwargs)


def mfnet2d_n24(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 1, N=24. Unpublished widths: widened so the cost matches the paper's (see spec)."""
    return mfnet2d(num_classes=num_classes, groups=24, stem_channels=24,
                   widths=(96, 240, 432, 864), depths=(3, 4, 5, 3), **kwargs)


def mfnet2d_nomux(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 1, N=16 without the multiplexer."""
    return mfnet2d(num_classes=num_classes, multiplexer=False, **kwargs)


def mfnet2d_nomux_wide(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 1, "w/o multiplexer, deeper & wider". Unpublished: depth and widths chosen (spec)."""
    return mfnet2d(num_classes=num_classes, multiplexer=False, widths=(112, 224, 448, 896),
                   depths=(3, 4, 8, 3), **kwargs)


def resnet18_mf(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """Table 1, "ResNet-18 (MF embedded)": ResNet-18's stem and depths, MF units (widths: spec)."""
    return mfnet2d(num_classes=num_classes, stem_channels=64, stem_kernel=(1, 7, 7),
                   widths=(192, 320, 640, 1280), depths=(2, 2, 2, 2), **kwargs)


def mobilenetv2_140_mf(*, num_classes: int = 1000, **kwargs) -> MobileNetV2MF:
    """Table 1, "MobileNet-v2 (1.4) (MF embedded)" (design and widths: see the spec)."""
    return MobileNetV2MF(num_classes=num_classes, width=1.4, groups=2, expansion=10, mux_div=16,
                         **kwargs)
