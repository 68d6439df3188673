"""The fiber conv (models/kernels/ops/fiber.py, FiberConv3d) against PyTorch's conv: forward,
both gradients, every MF-Net shape, random shapes, strides, fp64 gradcheck, a residual added in
the kernel, BatchNorm + ReLU folded in, the packed weights kept, and where it steps aside."""

import itertools
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models.kernels import build, paths
from models.kernels.modules import FiberConv3d
from models.kernels.ops import fiber
from models.mfnet import MFNet
from tests.models.kernels.helpers import check_against_reference, cl, close, randomise
from tests.paths import REPO


def test_random_shapes_forward_and_backward():
    rng = random.Random(0)
    for _ in range(25):
        groups = rng.choice([1, 2, 4, 16])
        cin_g, cout_g, kt = rng.randint(1, 13), rng.randint(1, 13), rng.choice([1, 3])
        shape = (rng.randint(1, 2), groups * cin_g, rng.randint(1, 5), rng.randint(1, 11), rng.randint(1, 37))
        check_against_reference(torch.randn(shape), torch.randn(groups * cout_g, cin_g, kt, 3, 3), groups)


def test_channels_last_random_shapes_and_strides_forward_and_backward():
    rng = random.Random(1)
    for _ in range(25):
        groups = rng.choice([1, 2, 4, 16])
        cin_g, cout_g, kt = rng.randint(1, 13), rng.randint(1, 30), rng.choice([1, 3])
        stride = rng.choice([(1, 1, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2)])
        shape = (rng.randint(1, 2), groups * cin_g, rng.randint(1, 5), rng.randint(1, 11), rng.randint(1, 37))
        check_against_reference(cl(torch.randn(shape)), torch.randn(groups * cout_g, cin_g, kt, 3, 3), groups,
                                stride)


@pytest.mark.parametrize("cin_g, cout_g", [(24, 6), (24, 12), (20, 24)])
def test_channels_last_frames_shared_by_consecutive_output_frames(cin_g, cout_g):
    """Each thread packs only the input frames its previous output frame did not read; rows of
    64 pixels of 20-24 channels make bands of 5 rows, so a thread's run of tasks crosses bands,
    samples and (on two threads) the other thread's run, at temporal stride 1 and 2; with two
    frames, the next band's first output frame reads the frames the last one held."""
    torch.manual_seed(cout_g)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for frames, stride in itertools.product((7, 2), ((1, 1, 1), (2, 1, 1), (2, 2, 2))):
                x = cl(torch.randn(2, 2 * cin_g, frames, 12, 64))
                check_against_reference(x, torch.randn(2 * cout_g, cin_g, 3, 3, 3), 2, stride)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cin_g", [1, 2, 3])
def test_channels_last_groups_of_few_channels_keep_the_frames_they_share(cin_g):
    """A pixel's channels are packed with one 8-float store; with 1 to 3 channels a group's
    store at a row's end reached past it, into a frame kept for the next output frame (rows of
    1500 pixels make bands of 5 rows, so a band's first row is a real one), and in a 5-pixel
    row into the next row's too. 7 output channels: the broadcast form, which reads the packing."""
    torch.manual_seed(cin_g)
    for shape, stride in (((1, 2 * cin_g, 4, 12, 1500), (1, 1, 1)), ((2, 2 * cin_g, 4, 2, 5), (2, 2, 2))):
        check_against_reference(cl(torch.randn(shape)), torch.randn(14, cin_g, 3, 3, 3), 2, stride)


def test_the_kernel_runs_on_every_thread_torch_is_given():
    # built without OpenMP, at::parallel_for in an extension runs one thread whatever is asked
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert build.extension().threads_used() == 2
    finally:
        torch.set_num_threads(before)


def _fiber_inputs(model: nn.Module, x: torch.Tensor, strided: bool = True) -> dict:
    inputs = {}

    def keep(module, args, output):
        inputs[module] = args[0]  # returns None: the output stays as it is

    hooks = [m.register_forward_hook(keep) for m in model.modules()
             if isinstance(m, nn.Conv3d) and m.groups > 1 and (strided or m.stride == (1, 1, 1))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return {(tuple(x.shape), tuple(m.weight.shape), m.stride): (m, x) for m, x in inputs.items()}


def test_every_mfnet_fiber_conv_shape_in_both_layouts_forward_and_backward():
    torch.manual_seed(0)
    stock = models.create_model("mfnet", fiber_kernel=False).eval()  # channels last throughout
    shapes = _fiber_inputs(stock, cl(torch.randn(1, 3, 8, 112, 112)))
    assert len(shapes) == 12  # 3x3x3 and 1x3x3 in each stage, and each stage's strided first unit
    for m, x in shapes.values():
        assert fiber.channels_last(x, m.stride)
        check_against_reference(x, m.weight.detach(), m.groups, m.stride)
    shapes = _fiber_inputs(MFNet(channels_last=False).eval(), torch.randn(1, 3, 8, 112, 112), strided=False)
    assert len(shapes) == 8  # NCDHW: the stride-1 ones
    for m, x in shapes.values():
        check_against_reference(x, m.weight.detach(), m.groups)


@pytest.mark.parametrize("kt", [1, 3])
def test_gradcheck_in_fp64(kt):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 2, kt, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fiber.fiber_conv3d(a, b, 4), (x, weight))


def test_the_scalar_path_a_cpu_without_avx2_takes_gives_the_same_numbers(monkeypatch):
    from models import kernels

    x, weight = torch.randn(1, 32, 4, 9, 21), torch.randn(32, 2, 3, 3, 3)
    fast = fiber.fiber_conv3d(x, weight, 16)
    monkeypatch.setenv(paths.SWITCH, "scalar")
    assert paths.force_scalar()
    close(fiber.fiber_conv3d(x, weight, 16), fast)
    assert kernels.status().startswith("suite kernel (scalar)") and "BatchNorm" not in kernels.status()


def test_a_conv_strided_in_time_gets_its_input_gradient_from_the_kernel(monkeypatch):
    """MF-Net's first fiber conv is strided (2, 1, 1); its input gradient runs as one stride-1
    conv per phase of the input frames, never as PyTorch's transposed conv."""
    monkeypatch.setattr(fiber, "_stock_grad_input", None)  # calling it would fail the test
    torch.manual_seed(3)
    for st, kt, frames in itertools.product((2, 3), (1, 3), (1, 4, 7)):
        x = cl(torch.randn(2, 4 * 3, frames, 6, 9))
        check_against_reference(x, torch.randn(4 * 5, 3, kt, 3, 3), 4, (st, 1, 1))


def test_the_input_gradient_s_packing_is_the_flipped_weight_s():
    """``pack(weight, groups, turned=True)``, made from the weight in one pass, is the packing
    of ``flipped``: input and output channels swapped per group, every kernel turned by 180°."""
    torch.manual_seed(4)
    for cout_g, cin_g, kt in ((6, 1, 3), (12, 6, 3), (5, 19, 1)):
        weight = torch.randn(3 * cout_g, cin_g, kt, 3, 3)
        assert torch.equal(fiber.pack(weight, 3, turned=True), fiber.pack(fiber.flipped(weight, 3), 3))


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 1, (1, 1, 1)), (12, 12, 3, (1, 1, 1)), (6, 12, 3, (1, 2, 2)), (20, 24, 1, (1, 1, 1))])
def test_training_adds_a_residual_in_the_kernel_and_passes_its_gradient_on(cin_g, cout_g, kt, stride):
    """``FiberConv3d(x, residual)`` with gradients: the residual added in the kernel's output,
    the input's, the weight's and the residual's gradients equal the conv and the add's."""
    torch.manual_seed(cin_g + kt)
    conv = FiberConv3d(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4, bias=False)
    x = cl(torch.randn(2, 4 * cin_g, 5, 13, 19))
    residual = cl(torch.randn(fiber.reference(x, conv.weight, 4, stride).shape))
    x1, r1 = x.clone().requires_grad_(), residual.clone().requires_grad_()
    x2, r2 = x.clone().requires_grad_(), residual.clone().requires_grad_()
    y1 = conv(x1, r1)
    assert y1.grad_fn.name() == "FiberConvFunctionBackward"  # one op: the add is in the kernel
    y2 = fiber.reference(x2, conv.weight, 4, stride) + r2
    close(y1, y2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    w1, conv.weight.grad = conv.weight.grad, None
    y2.backward(grad)
    close(x1.grad, x2.grad)
    close(r1.grad, r2.grad)
    close(w1, conv.weight.grad)


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 3, (1, 1, 1)), (12, 12, 1, (1, 1, 1)), (20, 24, 3, (1, 1, 1)), (6, 12, 3, (1, 2, 2)),
    (1, 6, 3, (2, 2, 2)), (48, 48, 1, (1, 1, 1))])
def test_inference_folds_batchnorm_and_relu_into_the_kernel(cin_g, cout_g, kt, stride, monkeypatch):
    """BN + ReLU applied while the kernel packs its input: the same numbers as the three ops,
    planar and broadcast forms, strided, borders included; one kernel call, with the scale and
    shift; and a scale and shift of the wrong size refused in one line."""
    torch.manual_seed(cin_g + cout_g)
    bn = randomise(nn.BatchNorm3d(4 * cin_g))
    conv = FiberConv3d(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4, bias=False)
    x = cl(torch.randn(2, 4 * cin_g, 5, 13, 19))
    expected = fiber.reference(torch.relu(bn(x)), conv.weight, 4, stride)
    calls, real = [], build.extension()

    class Spy:  # the real library, counting what each forward_cl call is given
        def __getattr__(self, name):
            return getattr(real, name)

        def forward_cl(self, x, packed, cout_g, stride, isa, scale=None, shift=None, residual=None):
            calls.append("folded" if scale is not None else "plain")
            return real.forward_cl(x, packed, cout_g, stride, isa, scale, shift, residual)

    monkeypatch.setattr(build, "extension", Spy)
    from models.kernels.support import eval_affine

    with torch.inference_mode():
        close(conv.eval_folded(x, eval_affine(bn)), expected)
    assert calls == ["folded"]
    packed = fiber.pack(conv.weight.detach(), 4)
    with pytest.raises(RuntimeError, match="scale and shift must be C"):  # one channel short
        real.forward_cl(x, packed, cout_g, list(stride), paths.table(), torch.ones(4 * cin_g - 1),
                        torch.ones(4 * cin_g - 1))


def test_where_the_kernel_does_not_apply_the_module_is_a_plain_conv(monkeypatch):
    x = torch.randn(1, 32, 4, 8, 8)
    x_cl = cl(x)
    strided = FiberConv3d(32, 32, (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=16, bias=False)
    assert not strided.runs_on_kernel(x)  # NCDHW: stride 1 only
    assert strided.runs_on_kernel(x_cl)
    conv = FiberConv3d(32, 32, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    assert conv.runs_on_kernel(x) and conv.runs_on_kernel(x_cl)
    assert not conv.runs_on_kernel(x_cl.double())  # channels last: fp32 only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv.runs_on_kernel(x) and not conv.runs_on_kernel(x_cl)
    # a CPU without AVX2 (simulated by the switch): channels last falls back to PyTorch's conv
    monkeypatch.setenv(paths.SWITCH, "scalar")
    assert not conv.runs_on_kernel(x_cl) and conv.runs_on_kernel(x)
    with torch.no_grad():
        close(conv(x_cl), fiber.reference(x_cl, conv.weight, 16))


def test_inference_keeps_the_packed_weight_until_the_weight_changes():
    from models.kernels.modules import PACKED

    conv = FiberConv3d(32, 48, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    x = cl(torch.randn(1, 32, 3, 6, 9))
    with torch.no_grad():
        close(conv(x), fiber.reference(x, conv.weight, 16))
        packed = conv.__dict__[PACKED][1]
        conv(x)
        assert conv.__dict__[PACKED][1] is packed
        conv.weight.mul_(2)  # an optimizer step or load_state_dict changes it in place
        close(conv(x), fiber.reference(x, conv.weight, 16))
        assert conv.__dict__[PACKED][1] is not packed
    assert PACKED not in str(list(conv.state_dict()))


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGE_PROBE = """
import torch
from pathlib import Path
from models.kernels.ops import fiber

def eligible(address):  # whether the mapping holding address may get transparent huge pages
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(v, 16) for v in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("THPeligible:"):
            return line.split()[1] == "1"

x = torch.randn(1, 96, 8, 56, 56).contiguous(memory_format=torch.channels_last_3d)
y = fiber.forward_cl(x, fiber.pack(torch.randn(96, 6, 3, 3, 3), 16), 6, (1, 1, 1))
print(eligible(y.data_ptr() + y.nbytes // 2), eligible(x.data_ptr() + x.nbytes // 2))
"""


@pytest.mark.slow
@pytest.mark.skipif(not THP.exists() or "[madvise]" not in THP.read_text(),
                    reason="transparent huge pages are not in madvise mode here")
def test_a_large_channels_last_output_asks_for_huge_pages():
    """An output written page by page is faulted in 2 MiB at a time, not 4 KiB. In a fresh
    process (glibc's allocator untouched) the input, allocated by PyTorch, is the control."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
