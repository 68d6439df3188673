"""The fiber-conv kernel (models/fiber_kernel.py) against PyTorch's conv: forward, both
gradients, every MF-Net shape, random shapes, fp64 gradcheck, and the fallbacks."""

import copy
import itertools
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from models import bn_relu
from models import fiber_kernel as fk
from models.bn_relu import BatchNormReLU3d
from models.fiber_kernel import FiberConv3d
from models.mfnet import MFNet


@pytest.fixture(scope="module", autouse=True)
def built():
    if fk.extension() is None:
        pytest.skip(f"kernel not built here: {fk.status()}")


def close(a, b, rtol=1e-4):
    """Equal within fp32 tolerance, relative to the larger values (sums of hundreds of terms)."""
    scale = b.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale).item() < rtol


def check_against_reference(x, weight, groups, stride=(1, 1, 1)):
    x1, w1 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y1, y2 = fk.fiber_conv3d(x1, w1, groups, stride), fk.reference(x2, w2, groups, stride)
    close(y1, y2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    y2.backward(grad)
    close(x1.grad, x2.grad)
    close(w1.grad, w2.grad)


def test_random_shapes_forward_and_backward():
    rng = random.Random(0)
    for _ in range(25):
        groups = rng.choice([1, 2, 4, 16])
        cin_g, cout_g, kt = rng.randint(1, 13), rng.randint(1, 13), rng.choice([1, 3])
        shape = (rng.randint(1, 2), groups * cin_g, rng.randint(1, 5), rng.randint(1, 11), rng.randint(1, 37))
        x = torch.randn(shape)
        weight = torch.randn(groups * cout_g, cin_g, kt, 3, 3)
        check_against_reference(x, weight, groups)


def test_channels_last_random_shapes_and_strides_forward_and_backward():
    rng = random.Random(1)
    for _ in range(25):
        groups = rng.choice([1, 2, 4, 16])
        cin_g, cout_g, kt = rng.randint(1, 13), rng.randint(1, 30), rng.choice([1, 3])
        stride = rng.choice([(1, 1, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2)])
        shape = (rng.randint(1, 2), groups * cin_g, rng.randint(1, 5), rng.randint(1, 11), rng.randint(1, 37))
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
        weight = torch.randn(groups * cout_g, cin_g, kt, 3, 3)
        check_against_reference(x, weight, groups, stride)


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
                x = torch.randn(2, 2 * cin_g, frames, 12, 64).contiguous(memory_format=torch.channels_last_3d)
                weight = torch.randn(2 * cout_g, cin_g, 3, 3, 3)
                check_against_reference(x, weight, 2, stride)
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
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
        check_against_reference(x, torch.randn(14, cin_g, 3, 3, 3), 2, stride)


def test_the_kernel_runs_on_every_thread_torch_is_given():
    # built without OpenMP, at::parallel_for in an extension runs one thread whatever is asked
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fk.extension().threads_used() == 2
    finally:
        torch.set_num_threads(before)


def test_every_mfnet_fiber_conv_shape_in_both_layouts_forward_and_backward():
    torch.manual_seed(0)
    model = MFNet().eval()  # channels last: every fiber conv, the strided first units too
    inputs = {}

    def keep(module, args, output):
        inputs[module] = args[0]  # returns None: the output stays as it is

    hooks = [m.register_forward_hook(keep) for m in model.modules()
             if isinstance(m, nn.Conv3d) and m.groups > 1]
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 112, 112).contiguous(memory_format=torch.channels_last_3d))
    for hook in hooks:
        hook.remove()
    shapes = {(tuple(x.shape), tuple(m.weight.shape), m.stride): (m, x) for m, x in inputs.items()}
    assert len(shapes) == 12  # 3x3x3 and 1x3x3 in each stage, and each stage's strided first unit
    for m, x in shapes.values():
        assert fk.channels_last(x, m.stride)
        check_against_reference(x, m.weight.detach(), m.groups, m.stride)


def test_every_mfnet_fiber_conv_shape_forward_and_backward():
    torch.manual_seed(0)
    model = MFNet(channels_last=False).eval()
    inputs = {}

    def keep(module, args, output):
        inputs[module] = args[0]  # returns None: the output stays as it is

    hooks = [m.register_forward_hook(keep) for m in model.modules()
             if isinstance(m, nn.Conv3d) and m.groups > 1 and m.stride == (1, 1, 1)]
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 112, 112))
    for hook in hooks:
        hook.remove()
    shapes = {(tuple(x.shape), tuple(m.weight.shape)): (m, x) for m, x in inputs.items()}
    assert len(shapes) == 8  # 3x3x3 and 1x3x3 in each of the four stages
    for m, x in shapes.values():
        check_against_reference(x, m.weight.detach(), m.groups)


@pytest.mark.parametrize("kt", [1, 3])
def test_gradcheck_in_fp64(kt):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 2, kt, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fk.fiber_conv3d(a, b, 4), (x, weight))


def test_the_scalar_path_a_cpu_without_avx2_takes_gives_the_same_numbers(monkeypatch):
    x, weight = torch.randn(1, 32, 4, 9, 21), torch.randn(32, 2, 3, 3, 3)
    fast = fk.fiber_conv3d(x, weight, 16)
    monkeypatch.setenv(fk.SWITCH, "scalar")
    assert fk.force_scalar()
    close(fk.fiber_conv3d(x, weight, 16), fast)
    assert fk.status().startswith("suite kernel (scalar)") and "BatchNorm" not in fk.status()


def test_mfnet_on_the_kernel_equals_the_reference_path_with_the_same_keys():
    torch.manual_seed(0)
    reference = MFNet(channels_last=False).eval()
    fast = MFNet(fiber_kernel=True).eval()
    assert list(fast.state_dict()) == list(reference.state_dict())
    for bn in (m for m in reference.modules() if isinstance(m, nn.BatchNorm3d)):
        randomise(bn)  # trained statistics, so the BatchNorm folded into the kernel does work
    fast.load_state_dict(reference.state_dict())
    kinds = {type(m).__name__ for m in fast.modules()}
    assert "FiberConv3d" in kinds
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        close(fast(x), reference(x))


def test_a_training_step_of_mfnet_on_the_kernel_equals_the_reference_path():
    """Every fiber conv and its gradients, the strided ones included, and BatchNorm + ReLU
    fused (models/bn_relu.py): the running statistics, and every parameter's gradient no
    further from the truth (the NCDHW reference path in fp64) than the reference path in fp32
    is. Through training-mode BatchNorm on few values (batch 2, a 2x2 last stage) fp32's
    rounding grows to about 3% of a gradient's norm on any fp32 path; a wrong gradient is off
    by its whole size. (Measured against the fp32 reference instead, the bound moved with the
    CPU: oneDNN's AVX-512 kernels put PyTorch's own channels-last path at half the distance
    its AVX2 ones did, and this kernel, nearer the truth than either, failed a 2x margin.)"""
    torch.manual_seed(0)
    models = {"reference": MFNet(channels_last=False), "fast": MFNet()}
    kinds = [type(m).__name__ for m in models["fast"].modules()]
    assert kinds.count("BatchNormReLU3d") > 40 and "BatchNorm3d" not in kinds  # each is before a ReLU
    x = torch.randn(2, 3, 8, 48, 48)
    state = copy.deepcopy(models["reference"].state_dict())
    models["truth"] = MFNet(channels_last=False).double()
    for name, model in models.items():
        model.load_state_dict(state)
        clip = x.double() if name == "truth" else x
        model.train()(clip.contiguous(memory_format=model.memory_format)).square().mean().backward()

    def errors(name):
        return torch.stack([(p.grad.double() - t.grad).norm() / t.grad.norm() for p, t in
                            zip(models[name].parameters(), models["truth"].parameters())])

    reference, fast = errors("reference"), errors("fast")
    assert reference.max() < 0.05 and fast.max() < 1.5 * reference.max(), (fast.max(), reference.max())
    assert fast.mean() < 1.5 * reference.mean()
    for b, c in zip(models["reference"].buffers(), models["fast"].buffers()):
        close(c.float(), b.float())


def test_a_conv_strided_in_time_gets_its_input_gradient_from_the_kernel(monkeypatch):
    """MF-Net's first fiber conv is strided (2, 1, 1); its input gradient runs as one stride-1
    conv per phase of the input frames, never as PyTorch's transposed conv."""
    monkeypatch.setattr(fk, "_stock_grad_input", None)  # calling it would fail the test
    torch.manual_seed(3)
    for st, kt, frames in itertools.product((2, 3), (1, 3), (1, 4, 7)):
        x = torch.randn(2, 4 * 3, frames, 6, 9).contiguous(memory_format=torch.channels_last_3d)
        check_against_reference(x, torch.randn(4 * 5, 3, kt, 3, 3), 4, (st, 1, 1))


def test_the_input_gradient_s_packing_is_the_flipped_weight_s():
    """``pack(weight, groups, turned=True)``, made from the weight in one pass, is the packing
    of ``flipped``: input and output channels swapped per group, every kernel turned by 180°."""
    torch.manual_seed(4)
    for cout_g, cin_g, kt in ((6, 1, 3), (12, 6, 3), (5, 19, 1)):
        weight = torch.randn(3 * cout_g, cin_g, kt, 3, 3)
        assert torch.equal(fk.pack(weight, 3, turned=True), fk.pack(fk.flipped(weight, 3), 3))


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 1, (1, 1, 1)), (12, 12, 3, (1, 1, 1)), (6, 12, 3, (1, 2, 2)), (20, 24, 1, (1, 1, 1))])
def test_training_adds_a_residual_in_the_kernel_and_passes_its_gradient_on(cin_g, cout_g, kt, stride):
    """``FiberConv3d.plus`` with gradients: the residual added in the kernel's output, the
    input's, the weight's and the residual's gradients equal the conv and the add's."""
    torch.manual_seed(cin_g + kt)
    conv = FiberConv3d(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4, bias=False)
    x = torch.randn(2, 4 * cin_g, 5, 13, 19).contiguous(memory_format=torch.channels_last_3d)
    out_shape = fk.reference(x, conv.weight, 4, stride).shape
    residual = torch.randn(out_shape).contiguous(memory_format=torch.channels_last_3d)
    x1, r1 = x.clone().requires_grad_(), residual.clone().requires_grad_()
    x2, r2 = x.clone().requires_grad_(), residual.clone().requires_grad_()
    y1 = conv.plus(x1, r1)
    assert y1.grad_fn.name() == "FiberConvFunctionBackward"  # one op: the add is in the kernel
    y2 = fk.reference(x2, conv.weight, 4, stride) + r2
    close(y1, y2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    w1, conv.weight.grad = conv.weight.grad, None
    y2.backward(grad)
    close(x1.grad, x2.grad)
    close(r1.grad, r2.grad)
    close(w1, conv.weight.grad)


@pytest.mark.parametrize("cin_g, cout_g, kt, stride, folded", [
    (24, 24, 3, (1, 1, 1), True), (12, 24, 3, (1, 2, 2), True), (6, 12, 1, (1, 2, 2), True),
    (48, 48, 1, (1, 1, 1), True), (6, 6, 3, (1, 1, 1), False)])
def test_training_folds_batchnorm_and_relu_where_the_weight_gradient_packs_its_input(
        cin_g, cout_g, kt, stride, folded):
    """``BNReLUConv`` in training on the kernel: BatchNorm + ReLU folded into the conv's packing
    (``BNReLUFiberFunction``) where the weight gradient packs its input, the narrow form (which
    reads it in place) left as it is; with and without a residual, every gradient and the
    running statistics as PyTorch's."""
    from models.mfnet import VIDEO, BNReLUConv

    torch.manual_seed(cin_g + cout_g + kt)
    unit = BNReLUConv(VIDEO, 4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4)
    reference = copy.deepcopy(unit)
    assert fk.use_kernel(unit) == 1
    with torch.no_grad():
        unit.bn.weight.uniform_(-1.5, 1.5)
        unit.bn.bias.uniform_(-0.5, 0.5)
    reference.load_state_dict(unit.state_dict())
    x = (torch.randn(2, 4 * cin_g, 4, 9, 11) * 2).contiguous(memory_format=torch.channels_last_3d)
    assert unit.conv.trains_folded(unit.bn, x) == folded
    out_shape = fk.reference(x, unit.conv.weight, 4, stride).shape
    residual = torch.randn(out_shape).contiguous(memory_format=torch.channels_last_3d)
    grad = torch.randn(out_shape)
    for with_residual in (False, True):
        results = []
        for net in (unit, reference):
            net.zero_grad()
            xs, rs = x.clone().requires_grad_(), residual.clone().requires_grad_()
            y = net.plus(xs, rs) if with_residual else net(xs)
            y.backward(grad)
            results.append((y, xs.grad, rs.grad, net.conv.weight.grad, net.bn.weight.grad, net.bn.bias.grad,
                            net.bn.running_mean, net.bn.running_var))
        kinds = results[0][0].grad_fn.name()
        assert ("BNReLUFiberFunction" in kinds) == folded
        for got, want in zip(*results):
            if want is None:
                assert got is None
            else:
                close(got, want)


def test_training_keeps_a_hooked_batchnorm_a_module_of_its_own():
    """A hook on the BatchNorm before a pointwise or a fiber conv sees it called in training: the
    ops that fold it into the conv step aside."""
    from models.mfnet import VIDEO, BNReLUConv

    torch.manual_seed(6)
    for unit in (BNReLUConv(VIDEO, 48, 96),
                 BNReLUConv(VIDEO, 96, 96, (3, 3, 3), (1, 1, 1), (1, 1, 1), groups=4)):
        fk.use_kernel(unit)
        x = torch.randn(2, unit.bn.num_features, 3, 5, 7).contiguous(memory_format=torch.channels_last_3d)
        seen = []
        hook = unit.bn.register_forward_hook(lambda m, args, out, seen=seen: seen.append(out))
        x.requires_grad_()
        unit(x).sum().backward()
        unit.plus(x, unit(x).detach())
        hook.remove()
        assert len(seen) == 3 and x.grad is not None


def randomise(bn: nn.BatchNorm3d) -> nn.BatchNorm3d:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 1)
        bn.bias.uniform_(-1, 1)
    return bn.eval()


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 3, (1, 1, 1)), (12, 12, 1, (1, 1, 1)), (20, 24, 3, (1, 1, 1)), (6, 12, 3, (1, 2, 2)),
    (1, 6, 3, (2, 2, 2)), (48, 48, 1, (1, 1, 1))])
def test_inference_folds_batchnorm_and_relu_into_the_kernel(cin_g, cout_g, kt, stride, monkeypatch):
    """BN + ReLU applied while the kernel packs its input: the same numbers as the three ops,
    planar and broadcast forms, strided, borders included; with gradients wanted, or a BN in
    training mode, the three ops run as they are."""
    torch.manual_seed(cin_g + cout_g)
    bn = randomise(nn.BatchNorm3d(4 * cin_g))
    conv = nn.Conv3d(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4, bias=False)
    assert fk.use_kernel(nn.Sequential(conv)) == 1
    x = torch.randn(2, 4 * cin_g, 5, 13, 19).contiguous(memory_format=torch.channels_last_3d)
    expected = fk.reference(torch.relu(bn(x)), conv.weight, 4, stride)
    calls, real = [], fk.extension()

    class Spy:  # the real kernel, counting what each forward_cl call is given
        def __getattr__(self, name):
            return getattr(real, name)

        def forward_cl(self, x, packed, cout_g, stride, path, scale=None, shift=None, residual=None):
            calls.append("folded" if scale is not None else "plain")
            return real.forward_cl(x, packed, cout_g, stride, path, scale, shift, residual)

    monkeypatch.setattr(fk, "extension", Spy)
    with torch.inference_mode():
        close(conv.forward_after(bn, x), expected)
    assert calls == ["folded"]  # one kernel call, with the scale and shift
    seen = []
    hook = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.inference_mode():  # a hook on the conv sees its input, the activated one
        close(conv.forward_after(bn, x), expected)
    hook.remove()
    assert calls == ["folded", "plain"] and len(seen) == 1 and bool((seen[0] >= 0).all())
    packed = fk.pack(conv.weight.detach(), 4)
    with pytest.raises(RuntimeError, match="scale and shift must be C"):  # one channel short
        real.forward_cl(x, packed, cout_g, list(stride), fk.path(), torch.ones(4 * cin_g - 1),
                        torch.ones(4 * cin_g - 1))
    calls.clear()
    training = copy.deepcopy(bn).train()  # its forward moves its running statistics
    with torch.no_grad():
        out = conv.forward_after(training, x)
    assert calls == ["plain"]  # BN in training mode: the conv alone
    close(out, fk.reference(torch.relu(nn.functional.batch_norm(x, None, None, bn.weight, bn.bias,
                                                                True)), conv.weight, 4, stride))
    calls.clear()
    x.requires_grad_()
    out = conv.forward_after(bn, x)
    out.sum().backward()
    close(out.detach(), expected)
    assert calls[0] == "plain" and x.grad is not None  # the forward, then the gradients


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 1, (1, 1, 1)), (12, 12, 3, (1, 1, 1)), (20, 24, 1, (1, 1, 1)), (6, 12, 3, (1, 2, 2)),
    (48, 48, 1, (1, 1, 1))])
def test_inference_adds_a_residual_as_the_output_is_written(cin_g, cout_g, kt, stride):
    """MF-Net's ``conv_m2(...) + x``: the residual added to each output row as the kernel writes
    it, planar and broadcast forms, strided; a residual of another shape is refused in one line;
    ``BNReLUConv.plus`` gives the same as the module and the add, and a hook on the module still
    sees it called."""
    from models.mfnet import VIDEO, BNReLUConv

    torch.manual_seed(cout_g + kt)
    unit = BNReLUConv(VIDEO, 4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, (kt // 2, 1, 1), groups=4)
    assert fk.use_kernel(unit) == 1
    randomise(unit.bn)
    unit.eval()
    x = torch.randn(2, 4 * cin_g, 5, 13, 19).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        plain = fk.reference(torch.relu(unit.bn(x)), unit.conv.weight, 4, stride)
        residual = torch.randn_like(plain).contiguous(memory_format=torch.channels_last_3d)
        close(unit.conv.forward_folded(unit.bn, x, residual), plain + residual)
        close(unit.plus(x, residual), plain + residual)
        # one frame of one clip: too few tasks for whole blocks of groups, so each block's rows
        # start at its own first group's channels (the planar form's rows-outer order)
        one = x[:1, :, :1].contiguous(memory_format=torch.channels_last_3d)
        want = fk.reference(torch.relu(unit.bn(one)), unit.conv.weight, 4, stride)
        extra = torch.randn_like(want).contiguous(memory_format=torch.channels_last_3d)
        close(unit.conv.forward_folded(unit.bn, one, extra), want + extra)
        short = residual[:, :, :-1].contiguous(memory_format=torch.channels_last_3d)  # a frame short
        with pytest.raises(RuntimeError, match="residual must be a channels-last-3d fp32 CPU tensor"):
            unit.conv.forward_folded(unit.bn, x, short)
        seen = []
        hook = unit.register_forward_hook(lambda m, args, out: seen.append(out))
        close(unit.plus(x, residual), plain + residual)
        hook.remove()
    assert len(seen) == 1


def test_the_profiler_names_the_kernel_folded_or_not():
    from torch.profiler import profile

    model = MFNet(fiber_kernel=True).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    for context in (torch.inference_mode, torch.enable_grad):  # folded, and as a module
        with profile() as prof, context():
            model(x)
        names = {event.key: event.count for event in prof.key_averages()}
        convs = sum(isinstance(m, fk.FiberConv3d) for m in model.modules())  # 28 in MF-Net
        assert names.get(fk.PROFILED_AS) == convs
    # in inference, each fiber conv's BatchNorm + ReLU is folded into it, and each pointwise
    # conv's into that (models/pointwise.py; a unit's multiplexer, two of them, is one op); the
    # stem's and the one before the classifier are fused
    from models import pointwise
    from models.mfnet import BNReLUConv, MultiFiberUnit

    fused = sum(isinstance(m, BatchNormReLU3d) for m in model.modules())
    pointwise_convs = sum(isinstance(m, BNReLUConv) and m.conv.kernel_size == (1, 1, 1)
                          for m in model.modules())
    units = sum(isinstance(m, MultiFiberUnit) for m in model.modules())
    with profile() as prof, torch.inference_mode():
        model(x.contiguous(memory_format=torch.channels_last_3d))
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get(pointwise.PROFILED_AS) == pointwise_convs - 2 * units
    assert counts.get(pointwise.MULTIPLEXER_PROFILED_AS) == units
    assert counts.get(bn_relu.PROFILED_AS) == fused - convs - pointwise_convs == 2


def test_where_the_kernel_does_not_apply_the_module_is_a_plain_conv(monkeypatch):
    x = torch.randn(1, 32, 4, 8, 8)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    strided = fk.FiberConv3d(32, 32, (3, 3, 3), (1, 2, 2), (1, 1, 1), groups=16, bias=False)
    assert not strided._on_kernel(x)  # NCDHW: stride 1 only
    assert strided._on_kernel(x_cl)
    conv = fk.FiberConv3d(32, 32, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    assert conv._on_kernel(x) and conv._on_kernel(x_cl)
    assert not conv._on_kernel(x_cl.double())  # channels last: fp32 only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._on_kernel(x) and not conv._on_kernel(x_cl)
    # a CPU without AVX2 (simulated by the switch): channels last falls back to PyTorch's conv
    monkeypatch.setenv(fk.SWITCH, "scalar")
    assert not conv._on_kernel(x_cl) and conv._on_kernel(x)
    with torch.no_grad():
        close(conv(x_cl), fk.reference(x_cl, conv.weight, 16))


def test_inference_keeps_the_packed_weight_until_the_weight_changes():
    conv = fk.FiberConv3d(32, 48, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    x = torch.randn(1, 32, 3, 6, 9).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        close(conv(x), fk.reference(x, conv.weight, 16))
        packed = conv._pack_cache[1]
        conv(x)
        assert conv._pack_cache[1] is packed
        conv.weight.mul_(2)  # an optimizer step or load_state_dict changes it in place
        close(conv(x), fk.reference(x, conv.weight, 16))
        assert conv._pack_cache[1] is not packed
    assert "_pack_cache" not in str(list(conv.state_dict()))


def test_any_model_s_grouped_convs_go_on_the_kernel_with_its_keys_unchanged():
    from benchmarks.workload import Setup, Workload

    workload = Workload("resnext3d", Setup(channels_last=True, fiber_kernel=True), (4, 32, 32))
    swapped = [m for m in workload.model.modules() if isinstance(m, fk.FiberConv3d)]
    reference = Workload("resnext3d", Setup(channels_last=True, fiber_kernel=False), (4, 32, 32))
    assert swapped and not any(isinstance(m, fk.FiberConv3d) for m in reference.model.modules())
    assert list(workload.model.state_dict()) == list(reference.model.state_dict())
    x, _ = reference.inputs(1)
    with torch.no_grad():
        close(workload.model.eval()(x), reference.model.eval()(x))
    assert fk.use_kernel(workload.model) == 0  # already on it


def test_no_compiler_falls_back_to_pytorch_in_one_line(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'mfnet_fiber_conv'\ng++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(fk, "_loaded", {})
    with pytest.warns(UserWarning, match="fiber convs run on PyTorch's own kernels"):
        assert fk.extension() is None
    assert fk.status() == ("stock PyTorch kernels: the kernel could not be built "
                           "(RuntimeError: g++: command not found)")
    conv = fk.FiberConv3d(32, 32, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    x = torch.randn(1, 32, 4, 8, 8)
    close(conv(x), fk.reference(x, conv.weight, 16))
    monkeypatch.setattr(fk, "_loaded", {})
    monkeypatch.setenv(fk.SWITCH, "off")
    assert fk.extension() is None and fk.status() == f"stock PyTorch kernels: {fk.SWITCH}=off"


def test_recording_the_status_never_builds_the_kernel(monkeypatch):
    from benchmarks import environment

    monkeypatch.setattr(fk, "_loaded", {})
    monkeypatch.setattr(fk, "extension", lambda: pytest.fail("built the kernel"))
    assert environment.collect("cpu")["fiber_kernel"].startswith("not loaded")


def test_a_run_asking_for_the_kernel_where_it_cannot_be_built_stops_before_measuring(monkeypatch, capsys):
    from benchmarks import run

    monkeypatch.setattr(fk, "_loaded", {"module": None, "why": "the kernel could not be built (simulated)"})
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(["--models", "mfnet", "--measure", "speed", "--fiber-kernel"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--fiber-kernel suite: the kernel could not be built (simulated)")


@pytest.mark.parametrize("extra, why", [
    (["--compile"], "is an eager fp32 kernel"),
    (["--dtype", "bf16"], "is an eager fp32 kernel"),
])
def test_a_run_where_the_kernel_would_not_run_is_refused_rather_than_mislabelled(extra, why, capsys):
    from benchmarks import run

    for asked in ("suite", "paired"):
        with pytest.raises(SystemExit):
            run.parse_args(["--models", "mfnet", "--measure", "speed", "--fiber-kernel", asked, *extra])
        assert f"--fiber-kernel {asked}: it {why}" in capsys.readouterr().err
    # unasked, the run is on stock kernels and its rows say so
    assert run.parse_args(["--models", "mfnet", "--measure", "speed", *extra]).fiber_kernel == "stock"


def test_a_run_is_on_the_kernel_by_default_where_it_runs_and_on_stock_where_it_cannot_be_built(monkeypatch):
    from benchmarks import run

    argv = ["--models", "mfnet", "--measure", "speed"]
    assert run.parse_args(argv).fiber_kernel == "suite"
    assert run.parse_args(argv + ["--fiber-kernel", "stock"]).fiber_kernel == "stock"
    assert run.parse_args(argv + ["--device", "cpu", "--fiber-kernel"]).fiber_kernel == "suite"
    monkeypatch.setattr(fk, "_loaded", {"module": None, "why": "the kernel could not be built (simulated)"})
    assert run.parse_args(argv).fiber_kernel == "stock"


def test_mfnet_is_on_the_kernel_by_default_and_use_stock_gives_back_plain_modules():
    """The fast path is the default as channels-last is (and the reference path stays plain);
    ``use_stock`` turns a built model into the stock one, module for module, the same keys."""
    kinds = lambda model: [type(m) for m in model.modules()]  # noqa: E731
    default, stock = MFNet(), MFNet(fiber_kernel=False)
    assert FiberConv3d in kinds(default) and BatchNormReLU3d in kinds(default)
    assert FiberConv3d not in kinds(MFNet(channels_last=False)) and FiberConv3d not in kinds(stock)
    assert fk.use_stock(default) == 28  # 16 units: 16 conv_m1 and 12 grouped conv_m2
    assert kinds(default) == kinds(stock) and list(default.state_dict()) == list(stock.state_dict())
    assert all(m.inplace for m in default.modules() if isinstance(m, nn.ReLU))
    fk.use_kernels(default, suite=True)
    assert kinds(default) == kinds(MFNet())


def test_flop_counters_see_the_fiber_convs_the_kernel_runs():
    """FlopCounterMode is a dispatch mode: under it the fiber convs run as PyTorch's convs, so
    the count is the stock model's, not one without its grouped convs."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.randn(1, 3, 4, 32, 32))
        return counter.get_total_flops()

    torch.manual_seed(0)
    assert flops(MFNet()) == flops(MFNet(fiber_kernel=False)) > 0


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGE_PROBE = """
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from models import fiber_kernel as fk

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
y = fk.forward_cl(x, fk.pack(torch.randn(96, 6, 3, 3, 3), 16), 6, (1, 1, 1))
print(eligible(y.data_ptr() + y.nbytes // 2), eligible(x.data_ptr() + x.nbytes // 2))
"""


@pytest.mark.skipif(not THP.exists() or "[madvise]" not in THP.read_text(),
                    reason="transparent huge pages are not in madvise mode here")
def test_a_large_channels_last_output_asks_for_huge_pages():
    """An output written page by page is faulted in 2 MiB at a time, not 4 KiB. In a fresh
    process (glibc's allocator untouched) the input, allocated by PyTorch, is the control."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE, str(Path(__file__).parent.parent)],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_a_paired_run_times_both_kernels_in_one_process_and_resumes_on_both(tmp_path):
    import json

    from benchmarks import run
    from benchmarks.results import read_csv

    argv = ["--models", "mfnet", "--clip", "2,32,32", "--quick", "--batch-size", "2",
            "--measure", "speed", "--results", str(tmp_path)]
    assert run.main(argv + ["--fiber-kernel"]) == 0  # the suite's rows alone: not a pair
    assert run.main(argv + ["--fiber-kernel", "paired"]) == 0  # so the pair is measured
    frame = read_csv(tmp_path / "measurements.csv")
    paired = frame[frame["run_id"] == frame["run_id"].iloc[-1]]
    timed = {"latency_ms", "infer_clips_per_s", "train_clips_per_s"}
    for kernels in ("stock", "suite"):
        assert timed <= set(paired[(paired["model"] == "mfnet") & (paired["kernels"] == kernels)]["metric"])
    sidecar = json.loads((tmp_path / "runs" / f"{paired['run_id'].iloc[0]}.json").read_text())
    assert "alternating rounds" in sidecar["speed_kernels"]
    assert run.main(argv + ["--fiber-kernel", "paired"]) == 0  # held under both: nothing new
    assert len(read_csv(tmp_path / "measurements.csv")) == len(frame)


def test_a_damaged_cached_kernel_is_rebuilt_rather_than_crash_the_process(tmp_path, monkeypatch):
    # a build killed while it linked leaves a library whose loading kills the process (SIGBUS)
    folder = tmp_path / fk.NAME
    folder.mkdir()
    library = folder / f"{fk.NAME}.so"
    library.write_bytes(b"\x7fELF" + b"\0" * 60)  # a truncated shared object
    monkeypatch.setattr(fk, "_build_dir", lambda: folder)
    with pytest.warns(UserWarning, match="does not load; building it afresh"):
        fk.check_cache()  # tried in a child process, which fails
    assert not folder.exists()  # so load() builds it from scratch
    # one this suite has loaded before (its digest recorded) is not tried again
    folder.mkdir()
    library.write_bytes(b"a library that loaded")
    (folder / "verified").write_text(fk._digest(library))
    monkeypatch.setattr(fk, "_loads_in_a_child", lambda path: pytest.fail("tried again"))
    fk.check_cache()
    assert library.exists()
    library.write_bytes(b"changed since")  # a different file: tried, and here it fails
    monkeypatch.setattr(fk, "_loads_in_a_child", lambda path: False)
    with pytest.warns(UserWarning):
        fk.check_cache()
    assert not folder.exists()
