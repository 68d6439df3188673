"""Baselines built from well-kept libraries: torchvision's video models, timm's 2D models and
PyTorchVideo's X3D. Each builder is a thin call; the library and function are the provenance
recorded in the model's spec.

The libraries are imported inside the builders, when a model is built: importing timm,
torchvision's models and pytorchvideo took 2.5 s here, which every start of ``run.py`` and
``train.py`` paid, ``--help`` and one-line errors included.
"""

import warnings

import torch
from torch import nn


def tv_video():
    from torchvision.models import video

    return video


def create_x3d(**kwargs) -> nn.Module:
    with warnings.catch_warnings():  # pytorchvideo 0.1.5 decorates with the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from pytorchvideo.models.x3d import create_x3d

    return create_x3d(**kwargs)


def r2plus1d_34(*, num_classes: int = 400, **kwargs) -> nn.Module:
    """R(2+1)D-34 (Tran et al. 2018) as torchvision's VideoResNet with (2+1)D convs and
    ResNet-34 depths [3, 4, 6, 3]; torchvision only ships the 18-layer builder."""
    resnet = tv_video().resnet
    return resnet.VideoResNet(resnet.BasicBlock, [resnet.Conv2Plus1D] * 4, [3, 4, 6, 3],
                              resnet.R2Plus1dStem, num_classes=num_classes, **kwargs)


def res3d(*, num_classes: int = 400, **kwargs) -> nn.Module:
    """Res3D / 3D ResNet-18 (Tran et al. 2017) as torchvision's r3d_18."""
    return tv_video().r3d_18(num_classes=num_classes, **kwargs)


def s3d(*, num_classes: int = 400, **kwargs) -> nn.Module:
    """S3D (Xie et al. 2018) as torchvision's s3d, its head pool clamped to the feature map so
    clips smaller than 16x224x224 run (the motion benchmark's 16x48x48 ends in a 2x1x1 map)."""
    model = tv_video().s3d(num_classes=num_classes, **kwargs)
    model.avgpool = ClampedAvgPool3d(model.avgpool.kernel_size)
    return model


class ClampedAvgPool3d(nn.Module):
    """A stride-1 average pool whose window is clamped to the input: where the input is at least
    the window (S3D at 16x224x224 and up, the paper's 64x224x224 included) it is the same pool."""

    def __init__(self, kernel_size: tuple[int, int, int]):
        super().__init__()
        self.kernel_size = tuple(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, T, H, W)
        window = tuple(min(k, size) for k, size in zip(self.kernel_size, x.shape[-3:]))
        return nn.functional.avg_pool3d(x, window, stride=1)


def timm_model(timm_name: str):
    """A builder for the timm model ``timm_name`` (no pretrained weights: none can be fetched)."""
    def build(*, num_classes: int = 1000, **kwargs) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    build.__name__ = timm_name
    return build


def resnext26_8x16d(*, num_classes: int = 1000, **kwargs) -> nn.Module:
    """The paper's ResNeXt-26 (8x16d) "of our design", as a timm ResNet.

    Only its cost is published (Table 1: 6.3 M, 1.1 G). Standard ResNeXt widths give 17.7 M /
    2.82 G, so the stage planes are narrowed to (40, 80, 152, 280), found by a grid search over
    width scales as the closest to both figures (6.17 M, 1.11 G). Depth (2 bottlenecks per stage:
    26 layers), cardinality 8 and base width 16 are the name's.
    """
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [2, 2, 2, 2], num_classes=num_classes, cardinality=8,
                  base_width=16, channels=(40, 80, 152, 280), **kwargs)


class AdaptiveHeadX3D(nn.Module):
    """PyTorchVideo's X3D with its fixed-window head pool made adaptive, so the model runs at
    any clip size (at the builder's size the two agree), and with no softmax in eval mode."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        net.blocks[-1].pool.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def x3d(*, clip_length: int, crop_size: int, depth_factor: float):
    """A builder for X3D (Feichtenhofer 2020) via ``pytorchvideo.models.x3d.create_x3d``, with
    the PyTorchVideo model zoo's configuration."""
    def build(*, num_classes: int = 400, **kwargs) -> nn.Module:
        return AdaptiveHeadX3D(create_x3d(
            input_clip_length=clip_length, input_crop_size=crop_size, depth_factor=depth_factor,
            model_num_class=num_classes, head_activation=None, **kwargs))
    return build


class FrameClassifier(nn.Module):
    """Runs a 2D image model on every frame of a clip and averages the logits (TSN-style
    consensus, Wang et al. 2016): the frame-based rows of Table 4."""

    def __init__(self, image_model: nn.Module):
        super().__init__()
        self.image_model = image_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, T, H, W) -> frames (N*T, C, H, W) -> logits (N, T, K) -> mean over T
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        return self.image_model(frames).view(n, t, -1).mean(1)
