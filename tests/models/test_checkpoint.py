"""Checkpoints: the authors' formats round-trip, inflation is exact, bad files are refused."""

from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models import CheckpointError, inflate_2d_to_3d, load_checkpoint, save_checkpoint


def logits(model, x):
    with torch.inference_mode():
        return model.eval()(x)


def randomised(name, **kwargs):
    """A model whose BN statistics are not the defaults, so a lost buffer would show."""
    torch.manual_seed(1)
    model = models.create_model(name, **kwargs)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_authors_3d_file_round_trips(tmp_path):
    source = randomised("mfnet", num_classes=101)
    # the released 3D layout: {'epoch', 'state_dict'}, 'module.' prefix, no num_batches_tracked
    state = {f"module.{k}": v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "MFNet3D_UCF-101_Split-1_96.3.pth"
    torch.save({"epoch": 40, "state_dict": state}, path)
    target = models.create_model("mfnet", num_classes=101)
    load_checkpoint(target, path)
    x = torch.randn(1, 3, 16, 64, 64)
    assert torch.equal(logits(source, x), logits(target, x))


def test_authors_2d_imagenet_file_loads_into_mfnet2d(tmp_path):
    source = randomised("mfnet2d")
    path = tmp_path / "MFNet2D_ImageNet1k-0000.pth"
    torch.save({k: v for k, v in source.state_dict().items()
                if not k.endswith("num_batches_tracked")}, path)
    target = models.create_model("mfnet2d")
    load_checkpoint(target, path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(logits(source, x), logits(target, x))


def test_2d_imagenet_file_inflates_into_3d_mfnet(tmp_path):
    source = randomised("mfnet2d")
    path = tmp_path / "MFNet2D_ImageNet1k-0000.pth"
    torch.save(source.state_dict(), path)
    target = models.create_model("mfnet")
    classifier_before = target.classifier.weight.clone()
    load_checkpoint(target, path)
    w2d, w3d = source.conv1.conv.weight, target.conv1.conv.weight  # [16,3,5,5] -> [16,3,3,5,5]
    assert torch.allclose(w3d, w2d.unsqueeze(2).repeat(1, 1, 3, 1, 1) / 3)
    assert torch.equal(target.conv2.B01.conv_m2.conv.weight[:, :, 0], source.conv2.B01.conv_m2.conv.weight)
    assert torch.equal(target.conv3.B02.conv_m1.bn.running_var,
                       source.conv3.B02.conv_m1.bn.running_var)
    assert torch.equal(target.classifier.weight, classifier_before)  # the head is not copied


def test_inflated_conv_on_identical_frames_equals_the_2d_conv():
    torch.manual_seed(0)
    conv2d = nn.Conv2d(4, 6, 3, padding=1)
    conv3d = nn.Conv3d(4, 6, (3, 3, 3), padding=(1, 1, 1))
    conv3d.load_state_dict(inflate_2d_to_3d(conv2d.state_dict(), conv3d, skip=()))
    frame = torch.randn(1, 4, 20, 20)
    clip = frame.unsqueeze(2).repeat(1, 1, 7, 1, 1)  # 7 identical frames
    with torch.no_grad():
        out3d, out2d = conv3d(clip), conv2d(frame)
    for t in range(1, 6):  # away from the temporal borders, where zero padding enters
        assert torch.allclose(out3d[:, :, t], out2d, atol=1e-5)
    assert not torch.allclose(out3d[:, :, 0], out2d, atol=1e-5)


def test_own_format_round_trips(tmp_path):
    source = randomised("c3d", num_classes=10)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, source, epoch=3)
    assert not list(path.parent.glob("*.tmp"))
    target = models.create_model("c3d", num_classes=10)
    load_checkpoint(target, path)
    x = torch.randn(1, 3, 16, 64, 64)
    assert torch.equal(logits(source, x), logits(target, x))


def test_a_file_for_another_model_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.save(models.create_model("i3d").state_dict(), path)
    model = models.create_model("mfnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing: .*conv1\.conv\.weight.*unexpected: "):
        load_checkpoint(model, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_partial_file_is_refused_not_loaded_in_part(tmp_path):
    state = models.create_model("mfnet").state_dict()
    del state["conv4.B03.conv_m1.conv.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    model = models.create_model("mfnet")
    before = model.conv1.conv.weight.clone()
    with pytest.raises(CheckpointError, match="missing: conv4.B03.conv_m1.conv.weight"):
        load_checkpoint(model, path)
    assert torch.equal(model.conv1.conv.weight, before)


def test_a_wrong_head_size_is_a_shape_mismatch(tmp_path):
    path = tmp_path / "ucf.pt"
    torch.save(models.create_model("mfnet", num_classes=101).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: classifier.bias \(101,\) vs model \(400,\)"):
        load_checkpoint(models.create_model("mfnet"), path)


class Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.conv.weight": torch.zeros(1)}, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* safely") as err:
        load_checkpoint(models.create_model("mfnet"), path)
    assert not marker.exists()
    # the global it needs is named; torch's advice to load it with weights_only=False is not passed on
    assert "needs the Python global getattr" in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_empty_garbage_or_truncated_files_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is None:  # a real checkpoint cut in half
        torch.save(models.create_model("mfnet2d").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(models.create_model("mfnet2d"), path)
    assert "\n" not in str(err.value)
    if content == b"not a checkpoint":
        assert "not a PyTorch checkpoint" in str(err.value) and "weights_only" not in str(err.value)


def test_a_state_dict_that_does_not_load_says_what_it_lacks_beyond_its_first_line():
    from models.checkpoint import whole_message

    model = torch.nn.Linear(2, 2)
    try:
        model.load_state_dict({"weight": torch.zeros(2, 2)})
    except RuntimeError as exc:
        text = whole_message(exc)
    assert text.startswith("Error(s) in loading state_dict for Linear: Missing key(s)") and '"bias"' in text
    assert whole_message(ValueError("x" * 1000)).endswith("…") and len(whole_message(ValueError("x" * 1000))) == 300


def test_a_file_of_non_tensors_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(models.create_model("mfnet2d"), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(models.create_model("mfnet2d"), tmp_path / "nope.pth")



def test_fine_tuning_keeps_the_backbone_of_an_authors_kinetics_file_and_starts_a_new_classifier(tmp_path):
    source = randomised("mfnet")  # 400 classes, saved as the authors' 3D release is
    path = tmp_path / "MFNet3D_Kinetics-400_72.8.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()
                                           if not k.endswith("num_batches_tracked")}}, path)
    target = models.create_model("mfnet", num_classes=2)
    head_before = target.classifier.weight.clone()
    message = load_checkpoint(target, path, new_classifier=True)
    assert message.count("\n") == 0 and "2-class classifier" in message and "400 classes" in message
    assert torch.equal(target.conv1.conv.weight, source.conv1.conv.weight)
    assert torch.equal(target.classifier.weight, head_before)
    # without the request, the same file is refused, as for evaluation
    with pytest.raises(CheckpointError, match="shape mismatch: classifier"):
        load_checkpoint(models.create_model("mfnet", num_classes=2), path)


def test_fine_tuning_still_refuses_a_backbone_that_does_not_fit(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.save(models.create_model("i3d").state_dict(), path)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(models.create_model("mfnet", num_classes=2), path, new_classifier=True)


@pytest.mark.parametrize("damage", ["nan", "int"])
def test_nan_or_integer_weights_are_refused(tmp_path, damage):
    state = models.create_model("mfnet2d").state_dict()
    key = "conv1.conv.weight"
    state[key] = (state[key].fill_(float("nan")) if damage == "nan" else state[key].long())
    path = tmp_path / f"{damage}.pt"
    torch.save(state, path)
    model = models.create_model("mfnet2d")
    before = model.conv1.conv.weight.clone()
    with pytest.raises(CheckpointError, match="non-finite" if damage == "nan" else "torch.int64"):
        load_checkpoint(model, path)
    assert torch.equal(model.conv1.conv.weight, before)
