"""bf16 inference on the suite's kernels (models/kernels/ops/bf16.py, csrc/bf16*): the library's
bf16 rows on both builds against PyTorch's rounding, the AVX512-BF16 build kept from use where it
disagrees with the emulated one, each conv with its epilogue against PyTorch's fp32 conv on
bf16-rounded operands, and MF-Net under bf16 autocast against the fp32 model, in inference and
training, with NaN and Inf where PyTorch sends them."""

import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import kernels
from models.kernels import blocks, build, paths, selfcheck
from models.kernels.ops import bf16
from tests.models.kernels.helpers import cl, randomise

BF16 = torch.bfloat16
# bf16 keeps 8 bits of mantissa: one rounding is within 2^-9 relative; a network's logits,
# rounded at every layer, within a few percent of the fp32 model's (PyTorch's own bf16 autocast
# was 0.0036 off MF-Net's fp32 logits at 16x224x224, relative in the L2 norm)
LOGITS_RTOL = 3e-2


@pytest.fixture(params=["native", "emulated"])
def rows_build(request):
    """Each build of the bf16 rows: AVX512-BF16 (where the CPU has it) and the emulated one."""
    native = request.param == "native"
    if native and not build.extension().cpu_has_avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16")
    return native


@pytest.fixture(params=["native", "emulated"])
def rows_path(request, monkeypatch):
    """bf16 on each path of its rows: the switch unset (AVX512-BF16 where the CPU has it) and
    ``bf16-emulated``."""
    if request.param == "native":
        if not build.extension().cpu_has_avx512_bf16():
            pytest.skip("this CPU has no AVX512-BF16")
        monkeypatch.delenv(paths.SWITCH, raising=False)
    else:
        monkeypatch.setenv(paths.SWITCH, paths.BF16_EMULATED)
    assert paths.bf16_path() == (paths.BF16_NATIVE if request.param == "native" else paths.BF16_EMULATED)
    return request.param


@pytest.fixture
def bf16_path(rows_path):
    """``rows_path`` where oneDNN runs bf16 convs (PyTorch's check: AVX-512 BW, VL and DQ)."""
    if not bf16.supported():
        pytest.skip("this PyTorch's oneDNN has no bf16 convs on this CPU")
    return rows_path


def rounded_reference(x: torch.Tensor, scale, shift) -> torch.Tensor:
    """relu(x * scale + shift) as the kernels compute it, one fused multiply-add in fp32 (here
    exact in fp64, then rounded to fp32), rounded to bf16 once as PyTorch rounds."""
    view = (1, -1, 1, 1, 1)
    exact = x.double() * scale.double().view(view) + shift.double().view(view)
    return torch.relu(exact.float()).to(BF16)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@pytest.mark.parametrize("channels", [1, 7, 16, 17, 96])
def test_the_rows_equal_pytorch_s_rounding_with_nan_and_inf(rows_build, channels):
    torch.manual_seed(channels)
    x = (torch.randn(2, channels, 3, 4, 5) * 4).to(BF16)
    x[0, 0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=BF16)
    x = cl(x)
    affines = [(torch.randn(channels), torch.randn(channels)) for _ in range(2)]
    outs, finite = build.extension().affine_relu_bf16(x, [a for a, _ in affines], [b for _, b in affines],
                                                      rows_build)
    assert not finite
    assert build.extension().affine_relu_bf16(x.nan_to_num(0.0, 0.0, 0.0), [affines[0][0]], [affines[0][1]],
                                              rows_build)[1]
    for out, (scale, shift) in zip(outs, affines):
        assert out.dtype == BF16 and out.is_contiguous(memory_format=torch.channels_last_3d)
        assert same_bits(out, rounded_reference(x, scale, shift))
    assert outs[0][0, 0, 0, 0, 0].isnan()  # NaN stays NaN through the ReLU, as torch.relu keeps it


def test_the_residual_add_equals_pytorch_s_rounding(rows_build):
    torch.manual_seed(1)
    y, r = (cl((torch.randn(2, 33, 3, 4, 5) * 3).to(BF16)) for _ in range(2))
    r[0, 5, 0, 0, 0] = float("nan")
    expected = (y.float() + r.float()).to(BF16)
    assert same_bits(build.extension().add_bf16_(y, r, rows_build), expected)


def test_the_rows_refuse_what_they_cannot_read_in_one_line():
    lib = build.extension()
    x = cl(torch.randn(1, 8, 2, 3, 3).to(BF16))
    scale = torch.ones(8)
    for bad, match in ((x.contiguous(), "channels-last-3d bf16"), (x.float(), "channels-last-3d bf16")):
        with pytest.raises(RuntimeError, match=match):
            lib.affine_relu_bf16(bad, [scale], [scale], False)
    with pytest.raises(RuntimeError, match="8 contiguous fp32"):
        lib.affine_relu_bf16(x, [torch.ones(7)], [scale], False)
    with pytest.raises(RuntimeError, match="one or two"):
        lib.affine_relu_bf16(x, [scale] * 3, [scale] * 3, False)
    with pytest.raises(RuntimeError, match="add_bf16_: y is"):
        lib.add_bf16_(x, cl(torch.randn(1, 8, 2, 3, 4).to(BF16)), False)


class OffByOne:
    """The real library, with an AVX512-BF16 build whose rows are off by one bf16 step."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cpu_has_avx512_bf16(self):
        return True

    def affine_relu_bf16(self, x, scales, shifts, native):
        outs, finite = self.real.affine_relu_bf16(x, scales, shifts, False)
        return [(o.view(torch.int16) + 1).view(BF16) if native else o for o in outs], finite


def test_a_native_build_that_disagrees_with_the_emulated_one_is_not_used(monkeypatch):
    real = build.extension()
    monkeypatch.delenv(paths.SWITCH, raising=False)
    monkeypatch.setattr(build, "_loaded", {"module": OffByOne(real), "why": "", "pool": False})
    with pytest.warns(UserWarning, match="disagree with the emulated build"):
        assert paths.bf16_path() == ""
    assert selfcheck.bf16_rows_agree(real) == real.cpu_has_avx512_bf16() or not real.cpu_has_avx512_bf16()


def test_the_switch_takes_each_bf16_path_and_names_them_in_its_error(monkeypatch):
    best = build.extension().best_path("")
    for value, taken in (("bf16-emulated", paths.BF16_EMULATED), ("bf16-fallback", "")):
        monkeypatch.setenv(paths.SWITCH, value)
        assert paths.bf16_path() == taken
        assert paths.path() == best  # fp32 convs keep the CPU's best path
    monkeypatch.setenv(paths.SWITCH, "bf16")
    with pytest.raises(ValueError, match="bf16-emulated, bf16-fallback"):
        kernels.check_settings()


@pytest.mark.parametrize("kernel, stride, groups, epilogue, merge", [
    ((1, 1, 1), (1, 1, 1), 1, "bn", 1), ((1, 1, 1), (1, 2, 2), 1, "none", 1), ((1, 1, 1), (1, 1, 1), 1, "add", 1),
    ((3, 3, 3), (1, 1, 1), 4, "bn", 1), ((3, 3, 3), (2, 1, 1), 4, "bn", 2), ((3, 3, 3), (1, 2, 2), 4, "bn", 4),
    ((1, 3, 3), (1, 1, 1), 4, "add", 2), ((3, 3, 3), (1, 1, 1), 4, "none", 4)])
def test_each_conv_and_its_epilogue_equals_pytorch_s_fp32_conv_on_rounded_operands(bf16_path, monkeypatch, kernel,
                                                                                 stride, groups, epilogue, merge):
    """Stated tolerance: operands are rounded to bf16 as the kernels round them, products are
    summed in fp32, and the output is rounded once, within 2^-8 of the largest output; with an
    add, twice (the conv's output, then the sum), within 2^-7. A grouped conv with its groups
    merged (``merge`` of them run as one, zeros between) is the same conv."""
    monkeypatch.setattr(bf16, "merge_groups", lambda *args: merge)
    torch.manual_seed(3)
    cin, cout = 8, 12
    padding = tuple(k // 2 for k in kernel)
    conv = nn.Conv3d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
    after = randomise(nn.BatchNorm3d(cout)) if epilogue == "bn" else None
    x = cl(torch.randn(2, cin, 4, 6, 7).to(BF16))
    w = conv.weight.detach()
    if after is not None:
        scale, shift = kernels.support.eval_affine(after)
        w = w * scale.view(-1, 1, 1, 1, 1)
    expected = F.conv3d(x.float(), w.to(BF16).float(), None, stride, padding, 1, groups)
    add = None
    if after is not None:
        expected = torch.relu(expected + shift.view(1, -1, 1, 1, 1))
    elif epilogue == "add":
        add = cl(torch.randn_like(expected).to(BF16))
        expected = expected + add.float()
    with torch.no_grad():
        out = bf16.conv(x, conv, after=after, add=add)
    assert out.dtype == BF16 and out.is_contiguous(memory_format=torch.channels_last_3d)
    tolerance = 2 ** -7 if add is not None else 2 ** -8
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < tolerance


@pytest.mark.parametrize("merge", [1, 2, 4, 8])
def test_merged_groups_are_the_grouped_conv(merge):
    """A grouped conv's weight as that of fewer groups, ``merge`` old ones side by side with zeros
    between: the same conv, within fp64 rounding."""
    torch.manual_seed(4)
    weight, x = torch.randn(24, 2, 3, 3, 3, dtype=torch.float64), torch.randn(1, 16, 3, 5, 5, dtype=torch.float64)
    expected = F.conv3d(x, weight, None, 1, 1, 1, 8)
    out = F.conv3d(x, bf16.merged(weight, 8, merge), None, 1, 1, 1, 8 // merge)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def test_the_merge_is_timed_once_per_shape_among_those_that_stay_narrow(bf16_path, monkeypatch):
    monkeypatch.setattr(bf16, "_merges", {})
    narrow = nn.Conv3d(16, 32, 3, padding=1, groups=16, bias=False)  # 1 input channel per group
    wide = nn.Conv3d(128, 128, 3, padding=1, groups=2, bias=False)  # 64: nothing to merge into
    shape = (1, 16, 2, 6, 6)
    first = bf16.folded(narrow, None, shape)
    (key, merge), = bf16.merge_choices().items()
    assert key[:2] == (shape, (32, 1, 3, 3, 3)) and merge in bf16.MERGES and first[4] == 16 // merge
    timed = []
    monkeypatch.setattr(bf16, "time", types.SimpleNamespace(perf_counter=lambda: timed.append(1) or 0.0))
    narrow.weight.data.mul_(2)
    assert bf16.folded(narrow, None, shape)[4] == 16 // merge and not timed  # folded again, not timed again
    assert bf16.folded(wide, None, (1, 128, 2, 4, 4))[4] == 2 and len(bf16.merge_choices()) == 1


def test_a_one_frame_input_runs_as_the_kernel_s_middle_frame(bf16_path):
    """A (3, 3, 3) conv on a one-frame clip reads only its middle frame (the others meet the
    zero padding); oneDNN's bf16 kernel returned NaN on this shape (12 channels per group, 8x8)
    and crashed the process with a packed weight, so it runs as the (1, 3, 3) conv."""
    torch.manual_seed(6)
    conv = nn.Conv3d(192, 192, 3, (2, 1, 1), 1, groups=16, bias=False)
    x = cl(torch.randn(1, 192, 1, 8, 8).to(BF16))
    assert bf16.geometry(conv, x.shape) == (slice(1, 2), [0, 1, 1], [1, 1, 1])
    assert bf16.geometry(conv, (1, 192, 2, 8, 8)) == (slice(None), [1, 1, 1], [2, 1, 1])
    expected = F.conv3d(x.float(), conv.weight.detach().to(BF16).float(), None, (2, 1, 1), 1, 1, 16)
    with torch.no_grad():
        out = bf16.conv(x, conv)
    assert out.shape == expected.shape
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 2 ** -8


def test_a_folded_weight_is_kept_until_the_weight_or_the_batchnorm_changes():
    conv, after = nn.Conv3d(8, 8, 1, bias=False), randomise(nn.BatchNorm3d(8))
    first = bf16.folded(conv, after, (1, 8, 2, 3, 3))
    assert bf16.folded(conv, after, (1, 8, 2, 3, 3)) is first
    with torch.no_grad():
        after.running_var.mul_(2)
    second = bf16.folded(conv, after, (1, 8, 2, 3, 3))
    assert second is not first
    with torch.no_grad():
        conv.weight.mul_(2)
    third = bf16.folded(conv, after, (1, 8, 2, 3, 3))
    assert third is not second
    # a run's batch 1 and throughput batch alternate without folding again, up to SHAPES_KEPT shapes
    batch4 = bf16.folded(conv, after, (4, 8, 2, 3, 3))
    assert bf16.folded(conv, after, (1, 8, 2, 3, 3)) is third and bf16.folded(conv, after, (4, 8, 2, 3, 3)) is batch4
    for n in range(5, 5 + bf16.SHAPES_KEPT):
        bf16.folded(conv, after, (n, 8, 2, 3, 3))
    assert bf16.folded(conv, after, (1, 8, 2, 3, 3)) is not third  # the oldest went


@pytest.mark.parametrize("unit", ["conv3.B01", "conv3.B02"])
@pytest.mark.parametrize("scales", ["positive", "one negative"])
def test_the_multiplexer_carries_the_fiber_conv_s_batchnorm_relu_where_its_scales_are_positive(bf16_path, unit,
                                                                                               scales):
    """A multiplexer's output meets the fiber conv's BatchNorm + ReLU: with every scale positive
    it is the multiplexer's epilogue and the fiber conv's weight (one pass of the rows per unit,
    the unit's input's), else a pass of the rows of its own (two). Either way the unit's output
    is the fp32 unit's within bf16 tolerance, a projecting strided unit's and a plain one's."""
    fast, reference = mfnet_pair()
    with torch.no_grad():
        for model in (fast, reference):
            bn = model.get_submodule(unit).conv_m1.bn
            bn.weight.abs_().add_(0.1)
            if scales == "one negative":
                bn.weight[5] = -0.7
    units = fast.get_submodule(unit), reference.get_submodule(unit)
    x = cl(torch.randn(2, units[1].conv_m1.conv.in_channels, 4, 14, 14).to(BF16).float())
    with torch.inference_mode():
        expected = units[1](x)
        with torch.autocast("cpu", dtype=BF16), torch.profiler.profile() as profile:
            out = units[0](x)
    assert (bf16.multiplexer_relu(units[0].conv_m1.parts[0]) is None) == (scales == "one negative")
    passes = sum(e.count for e in profile.key_averages() if e.key == bf16.PROFILED_AS)
    assert passes == (1 if scales == "positive" else 2)
    assert out.dtype == BF16 and relative(out, expected) < 2e-2
    with torch.inference_mode():  # new statistics: nothing folded from the old ones is kept
        for unit_ in units:
            unit_.conv_m1.bn.running_mean.add_(0.5)
        expected = units[1](x)
        with torch.autocast("cpu", dtype=BF16):
            assert relative(units[0](x), expected) < 2e-2


def test_a_weight_with_a_folded_input_scale_is_kept_until_that_batchnorm_changes():
    conv, before = nn.Conv3d(8, 8, (3, 3, 3), padding=1, groups=2, bias=False), randomise(nn.BatchNorm3d(8))
    first = bf16.folded(conv, None, (1, 8, 2, 3, 3), before=before)
    assert bf16.folded(conv, None, (1, 8, 2, 3, 3), before=before) is first
    assert bf16.folded(conv, None, (1, 8, 2, 3, 3)) is not first  # the plain fold is another weight
    with torch.no_grad():
        before.weight.abs_().add_(0.1)
    bias = bf16.folded(conv, None, (1, 8, 2, 3, 3), relu_of=before)[1]  # a binary epilogue's bias: t / s
    assert bias.dtype == BF16 and torch.equal(bias, bf16.multiplexer_relu(before).to(BF16))
    assert bf16.folded(conv, None, (1, 8, 2, 3, 3), before=before) is not first
    with torch.no_grad():
        before.running_mean.add_(1)
    assert not torch.equal(bf16.folded(conv, None, (1, 8, 2, 3, 3), relu_of=before)[1], bias)  # not kept stale


def same_pool(out: torch.Tensor, expected: torch.Tensor) -> bool:
    """The same values bit for bit, NaN where PyTorch's has NaN (whose bits PyTorch's own vector
    code writes as it likes)."""
    nan = expected.isnan()
    return bool(torch.equal(out.isnan(), nan)
                and torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16)))


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((2, 16, 3, 9, 10), (1, 3, 3), (1, 2, 2), (0, 1, 1)),  # MF-Net's stem pool, odd sizes
    ((1, 7, 5, 6, 7), (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((2, 1, 4, 4, 4), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    ((1, 20, 1, 3, 3), (1, 3, 3), (1, 1, 1), (0, 1, 1))])
def test_the_bf16_max_pool_equals_pytorch_s_with_nan_and_inf(shape, kernel, stride, padding):
    torch.manual_seed(7)
    x = torch.randn(shape).to(BF16)
    flat = x.view(-1)
    flat[3], flat[11], flat[-2] = float("nan"), float("inf"), -float("inf")
    flat[5] = torch.finfo(BF16).smallest_normal / 4  # a subnormal keeps its bits
    x = cl(x)
    out = bf16.max_pool(x, kernel, stride, padding)
    expected = F.max_pool3d(x.float(), kernel, stride, padding).to(BF16)
    assert out.shape == expected.shape and out.dtype == BF16
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert same_pool(out, expected)


def test_the_bf16_max_pool_refuses_what_it_cannot_read_in_one_line():
    x = cl(torch.randn(1, 4, 2, 5, 5).to(BF16))
    with pytest.raises(RuntimeError, match="must be a channels-last-3d bf16 CPU tensor"):
        bf16.max_pool(x.float(), (1, 3, 3), (1, 2, 2), (0, 1, 1))
    with pytest.raises(RuntimeError, match="padding at most half the kernel"):
        bf16.max_pool(x, (1, 3, 3), (1, 2, 2), (0, 2, 1))
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        bf16.max_pool(x, (3, 3, 3), (1, 1, 1), (0, 0, 0))


def test_the_stem_is_one_onednn_conv_and_the_library_s_pool_in_bf16_inference(bf16_path):
    """MF-Net's stem (conv, BatchNorm + ReLU, max pool) in bf16 autocast inference: the conv with
    its BatchNorm + ReLU folded in, the pool bf16 on the library, with no fp32 round trip; the
    fp32 stem's output within bf16 rounding. In training, under a hook, and on a clip with NaN
    it runs as its modules, and NaN reaches what PyTorch's stem sends it to."""
    fast, reference = mfnet_pair()
    stem = lambda model, x: model.maxpool(model.conv1(x))  # noqa: E731
    x = cl(torch.randn(2, 3, 4, 32, 32))
    with torch.inference_mode():
        expected = stem(reference, x)
        with torch.autocast("cpu", dtype=BF16), torch.profiler.profile() as profile:
            out = stem(fast, x)
    ran = {e.key for e in profile.key_averages()}
    assert "mkldnn::_convolution_pointwise" in ran and not {"aten::max_pool3d_with_indices", "aten::conv3d"} & ran
    assert out.dtype == BF16 and relative(out, expected) < 2 ** -7
    x[0, :, 1, 5, 5] = float("nan")
    with torch.inference_mode():
        expected = stem(reference, x)
        with torch.autocast("cpu", dtype=BF16), torch.profiler.profile() as profile:
            out = stem(fast, x)
    assert "aten::conv3d" in {e.key for e in profile.key_averages()}  # the modules ran
    assert torch.equal(out.isnan(), expected.isnan()) and bool(expected.isnan().any())
    with torch.autocast("cpu", dtype=BF16), torch.profiler.profile() as profile:
        stem(fast, x[1:].clone().requires_grad_())
    assert {"aten::conv3d", "aten::max_pool3d_with_indices"} <= {e.key for e in profile.key_averages()}


def mfnet_pair(trained_looking: bool = True):
    """MF-Net on the kernels and its plain fp32 reference, one state: trained-looking
    BatchNorms (every other multiplexer's next scales positive, ``multiplexer_relu``), or as
    initialised."""
    torch.manual_seed(0)
    reference = models.create_model("mfnet", channels_last=False).eval()
    for bn in (m for m in reference.modules() if isinstance(m, nn.BatchNorm3d) and trained_looking):
        randomise(bn)
    fibers = [m.conv_m1.bn for m in reference.modules() if hasattr(m, "conv_i1")]
    with torch.no_grad():  # half the multiplexers carry their fiber conv's BatchNorm + ReLU, half do not
        for bn in fibers[::2] if trained_looking else []:
            bn.weight.abs_().add_(0.1)
    fast = models.create_model("mfnet").eval()
    fast.load_state_dict(reference.state_dict())
    return fast, reference


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.slow  # the whole MF-Net
def test_mfnet_s_bf16_logits_are_the_fp32_model_s_within_bf16_tolerance(bf16_path):
    fast, reference = mfnet_pair()
    x = torch.randn(2, 3, 8, 112, 112)
    calls = []
    with torch.inference_mode():
        expected = reference(x)
        with torch.autocast("cpu", dtype=BF16), torch.profiler.profile() as profile:
            out = fast(x)
    calls = [e.key for e in profile.key_averages()]
    assert bf16.PROFILED_AS in calls and "mkldnn::_convolution_pointwise" in calls  # the bf16 path ran
    assert relative(out, expected) < LOGITS_RTOL
    assert torch.equal(out.argmax(1), expected.argmax(1))


@pytest.mark.slow  # the whole MF-Net
def test_mfnet_s_bf16_logits_on_two_frame_clips_are_the_fp32_model_s(bf16_path):
    """Two frames are one after the first stage's temporal stride: every later fiber conv sees a
    one-frame clip (PyTorch's own bf16 autocast returned NaN logits here)."""
    fast, reference = mfnet_pair()
    x = torch.randn(1, 3, 2, 48, 48)
    with torch.inference_mode():
        expected = reference(x)
        with torch.autocast("cpu", dtype=BF16):
            out = fast(x)
    assert relative(out, expected) < LOGITS_RTOL


@pytest.mark.slow  # the whole MF-Net
def test_mfnet_under_bf16_autocast_propagates_nan_and_inf_as_pytorch_does(bf16_path):
    fast, reference = mfnet_pair()
    stock = models.create_model("mfnet", fiber_kernel=False).eval()
    stock.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 8, 64, 64)
    x[0, 1, 2, 10, 10] = float("nan")
    y = torch.randn(1, 3, 8, 64, 64)
    y[0, 0, 0, 0, 0] = float("inf")
    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
        for clip in (x, y):
            assert torch.equal(fast(clip).isnan(), stock(clip).isnan())


@pytest.mark.slow  # the whole MF-Net
@pytest.mark.parametrize("where", ["conv2.B02.conv_m1.conv.weight", "conv3.B01.conv_i2.bn.running_var"])
def test_a_non_finite_weight_or_statistic_reaches_the_logits_pytorch_s_bf16_sends_it_to(bf16_path, where):
    fast, reference = mfnet_pair()
    state = reference.state_dict()
    state[where].view(-1)[0] = float("nan") if where.endswith("weight") else -2.0  # -2: rsqrt of a negative
    fast.load_state_dict(state)
    stock = models.create_model("mfnet", fiber_kernel=False).eval()
    stock.load_state_dict(state)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
        expected = stock(x)
        assert expected.isnan().any()
        assert torch.equal(fast(x).isnan(), expected.isnan())


def test_without_native_bf16_units_run_on_the_fp32_kernels_said_once(monkeypatch):
    fast, reference = mfnet_pair()
    monkeypatch.setenv(paths.SWITCH, paths.BF16_FALLBACK)  # what a CPU without AVX512-BF16 gets
    assert paths.bf16_path() == "" and paths.path() in paths.CL_PATHS
    monkeypatch.setattr(build, "_loaded", {k: v for k, v in build._loaded.items() if k != "told bf16 fallback"})
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.inference_mode():
        expected = reference(x)
        with torch.autocast("cpu", dtype=BF16):
            with pytest.warns(UserWarning, match="no native bf16"):
                out = fast(x)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                fast(x)
    assert out.dtype == BF16
    assert relative(out, expected) < LOGITS_RTOL


def test_batchnorm_relu_in_bf16_training_equals_its_fp32_op_within_bf16_rounding(rows_path):
    """The statistics, the output, grad x with two residual gradients added, and the parameters'
    gradients of the fused op on bf16 x, against the fp32 op on the same (bf16-exact) values:
    the same fp32 arithmetic on the same values, so the same bits, with the output and grad x
    rounded to bf16 once as PyTorch rounds."""
    from models.kernels.ops.bn_relu import BatchNormReLUFunction, batch_moments

    torch.manual_seed(4)
    x16 = cl((torch.randn(2, 24, 3, 5, 7) * 2 + 0.5).to(BF16))
    weight, bias = torch.randn(24), torch.randn(24)
    outs = {}
    for name, x in (("bf16", x16), ("fp32", cl(x16.float()))):
        x = x.clone().requires_grad_()
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        mean, var = batch_moments(x.detach())
        with torch.autocast("cpu", dtype=BF16, enabled=name == "bf16"):
            y, use1, use2 = BatchNormReLUFunction.apply(x, w, b, mean, torch.rsqrt(var + 1e-5), 2)
        gen = torch.Generator().manual_seed(5)
        grads = [cl(torch.randn(y.shape, generator=gen).to(BF16).to(x.dtype)) for _ in range(3)]
        torch.autograd.backward([y, use1, use2], grads)
        outs[name] = (mean, var, y, x.grad, w.grad, b.grad)
    for index, (got, expected) in enumerate(zip(outs["bf16"], outs["fp32"])):
        rounded = index in (2, 3)  # y and grad x are bf16
        assert torch.equal(got, expected.to(BF16) if rounded else expected), index


def test_an_eval_batchnorm_relu_under_bf16_autocast_runs_on_the_rows(rows_path):
    """A model's other BatchNorm + ReLU pairs (MF-Net's stem and tail) in bf16 inference: one
    pass of the rows, bf16 out, PyTorch's rounding of the fp32 result; with gradients wanted,
    PyTorch's own."""
    from models.kernels.modules import BatchNormReLU3d

    torch.manual_seed(7)
    bn = BatchNormReLU3d(24)
    randomise(bn)
    x = cl((torch.randn(2, 24, 3, 5, 7) * 2).to(BF16))
    with torch.autocast("cpu", dtype=BF16):
        with torch.no_grad():
            assert bn.applies(x)
            out = bn(x)
        assert not bn.applies(x)  # gradients wanted (the parameters'): PyTorch's
    assert out.dtype == BF16
    assert same_bits(out, rounded_reference(x, *kernels.support.eval_affine(bn)))


@pytest.mark.parametrize("unit", ["conv3.B01", "conv3.B02"])
def test_a_unit_s_bf16_training_gradients_are_the_fp32_unit_s_within_bf16_tolerance(bf16_path, unit):
    """A projecting strided unit and a plain one in training under bf16 autocast: BatchNorm +
    ReLU on the library's bf16 rows (forward and backward), the convs PyTorch's bf16. Their input
    and parameter gradients against the fp32 unit's: within 0.15 relative (PyTorch's own bf16
    autocast: 0.02-0.10 here), and no further than PyTorch's own bf16's, with a margin."""
    fast, reference = mfnet_pair(trained_looking=False)
    stock = models.create_model("mfnet", fiber_kernel=False)
    stock.load_state_dict(reference.state_dict())
    units = {name: m.get_submodule(unit).train() for name, m in
             (("suite", fast), ("fp32", reference), ("pytorch", stock))}
    x0 = cl(torch.randn(2, units["fp32"].conv_m1.conv.in_channels, 4, 14, 14).to(BF16).float())
    grads = {}
    for name, module in units.items():
        x = x0.clone().requires_grad_()
        with torch.profiler.profile() as profile:
            with torch.autocast("cpu", dtype=BF16, enabled=name != "fp32"):
                y = module(x)
            (y.float() * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        if name == "suite":
            ran = {e.key for e in profile.key_averages()}
            assert {bf16.PROFILED_AS, "BatchNormReLUFunctionBackward"} <= ran
        grads[name] = {"x": x.grad, **{n: p.grad for n, p in module.named_parameters()}}
    for key, expected in grads["fp32"].items():
        distance = relative(grads["suite"][key], expected)
        assert distance < 0.15 and distance <= 1.2 * relative(grads["pytorch"][key], expected) + 0.01, key


@pytest.mark.slow  # the whole MF-Net
def test_bf16_training_keeps_autocast_s_dtypes_and_the_fp32_model_s_statistics(bf16_path):
    """fp32 weights and gradients, BatchNorm statistics updated in fp32 near the fp32 model's,
    and the whole model's gradients on average no further from the fp32 model's than PyTorch's
    own bf16 autocast's (each parameter's own distance is 0.4-0.9 for both at this input)."""
    fast, reference = mfnet_pair(trained_looking=False)
    stock = models.create_model("mfnet", fiber_kernel=False)
    stock.load_state_dict(reference.state_dict())
    x, target = torch.randn(2, 3, 8, 64, 64), torch.tensor([3, 7])
    for model in (fast, reference, stock):
        model.train()
        with torch.autocast("cpu", dtype=BF16, enabled=model is not reference):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
    expected, pytorch = dict(reference.named_parameters()), dict(stock.named_parameters())
    mine, theirs = [], []
    for name, p in fast.named_parameters():
        assert p.dtype == p.grad.dtype == torch.float32, name
        mine.append(relative(p.grad, expected[name].grad))
        theirs.append(relative(pytorch[name].grad, expected[name].grad))
    assert sum(mine) / len(mine) <= 1.2 * sum(theirs) / len(theirs) + 0.02
    name = "conv4.B01.conv_m1.bn.running_mean"
    stats = dict(fast.named_buffers())[name]
    assert stats.dtype == torch.float32
    assert relative(stats, dict(reference.named_buffers())[name]) < LOGITS_RTOL


def test_a_hooked_unit_runs_as_modules_so_the_hook_sees_its_conv():
    fast, _ = mfnet_pair()
    seen = []
    conv = fast.conv3.B02.conv_m1.conv
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.inference_mode(), torch.autocast("cpu", dtype=BF16):
        fast(torch.randn(1, 3, 8, 64, 64))
    assert seen == [BF16]


def test_bf16_runs_on_the_kernels_and_fp16_and_compiled_graphs_do_not():
    assert kernels.why_not("cpu", "bf16") == ("" if bf16.supported() else "this PyTorch's oneDNN has no bf16 convs")
    assert "not fp16" in kernels.why_not("cpu", "fp16")
    assert "compiled" in kernels.why_not("cpu", "bf16", compiled=True)
    assert "bf16 inference" in kernels.status()


def test_a_unit_checks_which_bf16_path_it_takes_per_call():
    unit = next(m for m in mfnet_pair()[0].modules() if isinstance(m, blocks.FusedMultiFiberUnit))
    x = cl(torch.randn(1, unit.conv_m1.parts[2].in_channels, 2, 8, 8))
    with torch.inference_mode():
        assert not unit.bf16_autocast(x)
        with torch.autocast("cpu", dtype=BF16):
            assert unit.bf16_autocast(x) and unit.folds_bf16()
        with torch.autocast("cpu", dtype=torch.float16):
            assert not unit.bf16_autocast(x)
    unit.conv_m1.parts[0].train()
    assert not unit.folds_bf16()
