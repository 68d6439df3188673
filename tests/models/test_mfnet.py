"""MF-Net against the authors' release: exact size, cost, layout and checkpoint key names."""

import pytest
import torch
from torch import nn

import models
from benchmarks.measure.cost import count_macs
from models import ledger, mfnet


def test_3d_mfnet_has_exactly_the_released_parameter_count():
    # counted from the authors' release with a 400-class head (docs/authors-release.md)
    assert sum(p.numel() for p in models.create_model("mfnet").parameters()) == 7_996_368


def test_3d_mfnet_multiply_adds():
    cost = count_macs("mfnet")
    assert cost.input_shape == (1, 3, 16, 224, 224)
    assert cost.gmacs == pytest.approx(11.05, abs=0.005)  # the paper rounds it (ledger)
    assert cost.gflops == pytest.approx(2 * cost.gmacs)


def test_2d_mfnet_within_2_percent_of_table_2():
    cost, paper = count_macs("mfnet2d"), ledger.published("mfnet2d")
    assert cost.params / 1e6 == pytest.approx(paper.params_m.value, rel=0.02)
    assert cost.gmacs == pytest.approx(paper.gmacs.value, rel=0.02)


@pytest.mark.parametrize("clip", [(8, 32, 32), (16, 64, 48), (32, 96, 96), (64, 32, 32)])
def test_3d_mfnet_runs_other_clip_sizes(clip):
    model = models.create_model("mfnet", num_classes=5).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, *clip)).shape == (1, 5)


@pytest.mark.parametrize("size", [32, 112, 224])
def test_2d_mfnet_output_shape(size):
    model = models.create_model("mfnet2d").eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 1000)


def test_3d_feature_map_sizes_follow_table_2():
    model = models.create_model("mfnet").eval()
    sizes = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[2:])))
        for n in ("conv1", "maxpool", "conv2", "conv3", "conv4", "conv5")]
    with torch.inference_mode():
        model(torch.randn(1, 3, 16, 224, 224))
    for h in hooks:
        h.remove()
    assert sizes == {"conv1": (16, 112, 112), "maxpool": (16, 56, 56), "conv2": (8, 56, 56),
                     "conv3": (8, 28, 28), "conv4": (8, 14, 14), "conv5": (8, 7, 7)}


def test_module_names_are_the_authors_checkpoint_keys():
    state = models.create_model("mfnet").state_dict()
    # shapes quoted in docs/authors-release.md
    assert state["conv1.conv.weight"].shape == (16, 3, 3, 5, 5)
    assert state["conv2.B01.conv_i1.conv.weight"].shape == (24, 16, 1, 1, 1)
    assert state["conv2.B01.conv_m1.conv.weight"].shape == (96, 1, 3, 3, 3)
    assert state["conv2.B01.conv_m2.conv.weight"].shape == (96, 96, 1, 1, 1)
    assert state["conv2.B02.conv_m1.conv.weight"].shape == (96, 6, 3, 3, 3)
    assert state["classifier.weight"].shape == (400, 768)
    assert {"tail.bn.weight", "tail.bn.running_var", "classifier.bias"} <= set(state)
    units = {k.split(".")[0] + "." + k.split(".")[1] for k in state if k.startswith("conv") and ".B" in k}
    assert len(units) == 3 + 4 + 6 + 3
    shortcuts = {k.split(".conv_w1")[0] for k in state if ".conv_w1." in k}
    assert shortcuts == {"conv2.B01", "conv3.B01", "conv4.B01", "conv5.B01"}
    # 2D: the same names with 4-D kernels
    state2d = models.create_model("mfnet2d").state_dict()
    assert {k for k in state if "num_batches" not in k} == {k for k in state2d if "num_batches" not in k}
    assert state2d["conv1.conv.weight"].shape == (16, 3, 5, 5)


def test_one_fiber_unit_serves_2d_and_3d():
    unit_types = {type(m) for name in ("mfnet", "mfnet2d")
                  for m in models.create_model(name, channels_last=False).modules() if "Unit" in type(m).__name__}
    assert unit_types == {mfnet.MultiFiberUnit}


def test_only_conv1_and_conv_m1_have_temporal_extent():
    for name, m in models.create_model("mfnet").named_modules():
        if isinstance(m, nn.Conv3d):
            expected = 3 if name == "conv1.conv" or name.endswith("conv_m1.conv") else 1
            assert m.kernel_size[0] == expected, name


def test_no_multiplexer_variant_drops_only_the_multiplexer():
    full, nomux = (set(models.create_model(n).state_dict()) for n in ("mfnet2d", "mfnet2d_nomux"))
    assert nomux < full
    assert all(".conv_i1." in k or ".conv_i2." in k for k in full - nomux)


def test_fiber_count_sets_the_groups():
    for name, n in (("mfnet2d", 16), ("mfnet2d_n12", 12), ("mfnet2d_n24", 24)):
        model = models.create_model(name)
        assert model.conv3.B02.conv_m1.conv.groups == n


def _twins(name: str, dtype=torch.float32):
    fast = models.create_model(name, num_classes=7).to(dtype)
    reference = models.create_model(name, num_classes=7, channels_last=False).to(dtype)
    assert fast.memory_format != reference.memory_format
    reference.load_state_dict(fast.state_dict())  # the same keys and shapes: checkpoints are shared
    return fast, reference


def _max_grad_error(fast, reference, x) -> float:
    """The largest gradient difference, relative to the largest gradient of the model."""
    fast(x).square().sum().backward()
    reference(x).square().sum().backward()
    grads = dict(reference.named_parameters())
    scale = max(g.grad.abs().max().item() for g in grads.values())
    return max((p.grad - grads[n].grad).abs().max().item() for n, p in fast.named_parameters()) / scale


@pytest.mark.parametrize("name, shape", [("mfnet", (2, 3, 8, 48, 48)), ("mfnet2d", (2, 3, 64, 64))])
def test_the_fast_channels_last_path_equals_the_reference_path(name, shape):
    torch.manual_seed(0)
    fast, reference = _twins(name)
    x = torch.randn(shape)
    for mode in ("train", "eval"):  # batch statistics, then running statistics
        getattr(fast, mode)(), getattr(reference, mode)()
        with torch.no_grad():
            torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)
    # Gradients with frozen BatchNorm (~2e-7 here). With batch statistics over conv5's 2x2 maps,
    # fp32 rounding between memory formats is amplified to ~1e-2, and an input within rounding
    # of a ReLU's kink can flip its gradient on some seeds: both are conditioning, not math.
    assert _max_grad_error(fast.eval(), reference.eval(), x) < 1e-5


def _conv_kernels(model, x) -> set[str]:
    """The ATen convolution kernels one forward pass runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    return {e.key for e in prof.key_averages() if "conv" in e.key and e.key.startswith("aten::")}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a oneDNN build of torch")
def test_at_batch_one_the_fast_path_keeps_pointwise_convs_on_onednn():
    torch.manual_seed(0)
    fast, reference = _twins("mfnet")
    fast.eval(), reference.eval()
    # conv5's multiplexer sees 192 x 2 x 2 x 2: N*C*T*H = 768, which PyTorch sends to slow_conv3d
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)
        # on stock kernels: on the suite's, inference runs these convs fused (models/kernels)
        from models import kernels

        kernels.use_stock_kernels(fast)
        assert "aten::slow_conv3d_forward" in _conv_kernels(reference, x)
        assert "aten::slow_conv3d_forward" not in _conv_kernels(fast, x)
        assert "aten::mkldnn_convolution" in _conv_kernels(fast, x)
