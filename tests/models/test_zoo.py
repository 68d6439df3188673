"""The defining structure of each baseline, checked cheaply (no forward pass at full size)."""

import torch
from torch import nn
from torchvision.models.video.resnet import Conv2Plus1D

import models
from models.i3d import InceptionBlock


def test_r2plus1d_34_depths_and_midplanes():
    model = models.create_model("r2plus1d")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    block = model.layer2[1].conv1[0]
    assert isinstance(block, Conv2Plus1D)
    spatial, temporal = block[0], block[3]
    assert spatial.kernel_size == (1, 3, 3) and temporal.kernel_size == (3, 1, 1)
    # Tran et al. 2018, Sec. 3.5: M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)), here 128->128
    assert spatial.out_channels == (3 * 9 * 128 * 128) // (9 * 128 + 3 * 128) == 288


def test_i3d_has_nine_inception_blocks_of_four_branches():
    model = models.create_model("i3d")
    blocks = [m for m in model.modules() if isinstance(m, InceptionBlock)]
    assert len(blocks) == 9
    assert [b.num_out for b in blocks] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    for b in blocks:
        assert len(list(b.children())) == 4
        assert b.branch1[1].conv.kernel_size == (3, 3, 3)
    assert model.features.conv_1a.conv.kernel_size == (7, 7, 7)


def test_c3d_has_eight_convs_and_three_fc_layers():
    model = models.create_model("c3d")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 8 and all(c.kernel_size == (3, 3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 3
    assert model.fc6.in_features == 4608  # pool5 without padding: 512 x 1 x 3 x 3


def test_resnext3d_101_is_101_layers_deep_with_32_groups():
    model = models.create_model("resnext3d")
    convs = [m for n, m in model.named_modules()
             if isinstance(m, nn.Conv3d) and "downsample" not in n]
    assert len(convs) + 1 == 101  # + the classifier
    grouped = [c for c in convs if c.groups > 1]
    assert len(grouped) == 33 and all(c.groups == 32 for c in grouped)
    assert model.layer1[0].downsample is not None  # shortcut B: projection where shape changes
    assert model.layer1[1].downsample is None


def test_res3d_and_s3d_come_from_torchvision():
    assert type(models.create_model("res3d")).__module__ == "torchvision.models.video.resnet"
    assert type(models.create_model("s3d")).__module__ == "torchvision.models.video.s3d"


def test_x3d_comes_from_pytorchvideo_and_returns_logits_in_eval():
    model = models.create_model("x3d_xs", num_classes=5).eval()
    assert type(model.net).__module__.startswith("pytorchvideo")
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 4, 64, 64))
    assert not torch.allclose(out.sum(1), torch.ones(2))  # no softmax sneaking in


def test_frame_classifier_averages_the_2d_logits_over_frames():
    torch.manual_seed(0)
    frames_model = models.create_model("resnet18_frames", num_classes=6).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.inference_mode():
        out = frames_model(clip)
        per_frame = torch.stack([frames_model.image_model(clip[:, :, t]) for t in range(4)], 1)
    assert torch.allclose(out, per_frame.mean(1), atol=1e-5)


def test_approximate_models_are_the_ones_without_a_published_architecture():
    specs = [models.get_spec(n) for n in models.list_models()]
    approximate = {s.name for s in specs if s.fidelity == "approximate" and s.family != "frame"}
    assert approximate == {"mfnet2d_n12", "mfnet2d_n24", "mfnet2d_nomux", "mfnet2d_nomux_wide",
                           "resnet18_mf", "mobilenetv2_140_mf", "resnext26"}


def test_s3d_runs_small_clips_and_equals_torchvision_where_its_pool_fits():
    from torchvision.models import video as tv_video

    torch.manual_seed(0)
    ours = models.create_model("s3d", num_classes=6).eval()
    with torch.no_grad():
        assert ours(torch.randn(1, 3, 16, 48, 48)).shape == (1, 6)  # the motion benchmark's clip
        reference = tv_video.s3d(num_classes=6).eval()
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(1, 3, 16, 224, 224)  # the smallest clip whose map fills the (2, 7, 7) pool
        torch.testing.assert_close(ours(x), reference(x))
