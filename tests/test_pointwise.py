"""MF-Net's pre-activation pointwise convs in one pass (models/pointwise.py) against BatchNorm,
ReLU, ``F.conv3d`` and the add, and where the fused op steps aside."""

import pytest
import torch
import torch.nn.functional as F

from models import fiber_kernel as fk
from models import pointwise
from models.bn_relu import fuse_bn_relu
from models.mfnet import VIDEO, BNReLUConv, MFNet, MultiFiberUnit


@pytest.fixture(scope="module", autouse=True)
def built():
    if fk.extension() is None or fk.path() not in fk.CL_PATHS:
        pytest.skip(f"kernel not built here, or no AVX2: {fk.status()}")


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def randomise(bn):
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)  # negative scales flip the ReLU's mask
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)


@pytest.fixture(params=["avx2", "avx512-emulated", "avx512"])
def each_path(request, monkeypatch):
    """Each channels-last path in turn: AVX2 (24 output channels a chunk), the AVX-512 blocking
    (48) on pairs of AVX2 registers, and the AVX-512 build itself where the CPU has it."""
    if fk.extension().path(request.param) != request.param:
        pytest.skip(f"this CPU cannot run {request.param}")
    monkeypatch.setenv(fk.SWITCH, request.param)
    assert fk.path() == request.param
    return request.param


def unit(k: int, co: int, stride=(1, 1, 1)) -> BNReLUConv:
    """A pre-activation 1x1x1 conv on the suite's kernels, in eval mode, trained statistics."""
    module = BNReLUConv(VIDEO, k, co, stride=stride)
    torch.nn.init.normal_(module.conv.weight, std=k ** -0.5)
    fuse_bn_relu(module)  # what use_kernel does to MF-Net's pairs (here without a fiber conv)
    randomise(module.bn)
    return module.eval()


def expected(module: BNReLUConv, x, residual=None):
    y = F.conv3d(torch.relu(F.batch_norm(x, module.bn.running_mean, module.bn.running_var,
                                         module.bn.weight, module.bn.bias, eps=module.bn.eps)),
                 module.conv.weight, stride=module.conv.stride)
    return y if residual is None else y + residual


@pytest.mark.parametrize("k, co, shape, stride", [
    (96, 24, (2, 3, 5, 7), (1, 1, 1)),    # MF-Net's narrowing multiplexer conv: whole chunks of 24
    (24, 96, (1, 4, 6, 6), (1, 1, 1)),    # its widening one: 4 chunks per pixel
    (16, 16, (1, 2, 3, 3), (1, 1, 1)),    # 2 vectors a chunk: 6-pixel blocks
    (13, 7, (2, 1, 5, 11), (1, 1, 1)),    # channels off the vector width: tails in, partial vector out
    (5, 40, (1, 1, 7, 7), (1, 1, 1)),     # a 16-channel last chunk
    (8, 3, (3, 2, 4, 9), (1, 1, 1)),      # fewer output channels than a vector
    (40, 50, (1, 3, 9, 11), (1, 1, 1)),   # pixels past one 48-pixel task, a 2-channel last chunk
    (16, 96, (2, 5, 7, 7), (2, 1, 1)),   # conv2's shortcut: every other frame
    (96, 192, (1, 2, 9, 11), (1, 2, 2)),  # conv3's: every other row and column, odd sizes
])
def test_the_fused_op_equals_batchnorm_relu_conv_and_the_add(k, co, shape, stride, each_path):
    torch.manual_seed(k * 100 + co)
    module = unit(k, co, stride)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    out = [(d - 1) // s + 1 for d, s in zip(shape[1:], stride)]
    residual = cl(torch.randn(shape[0], co, *out))
    with torch.inference_mode():
        assert pointwise.folds(module.bn, module.relu, module.conv, x)
        y = module(x)
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        close(y, expected(module, x))
        close(module.plus(x, residual), expected(module, x, residual))


def test_mfnet_runs_its_pointwise_convs_fused_and_equals_the_reference_path():
    from torch.profiler import profile

    torch.manual_seed(0)
    reference = MFNet(channels_last=False).eval()
    for bn in (m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        randomise(bn)
    fast = MFNet().eval()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.inference_mode(), profile() as prof:
        out = fast(x)
    close(out, reference(x), 1e-4)
    counts = {e.key: e.count for e in prof.key_averages()}
    # every 1x1x1 conv: two per unit, and each stage's first unit's conv_m2 and its strided
    # shortcut; only the stem is left to PyTorch's conv, and the last BatchNorm + ReLU fused
    pointwise_convs = sum(isinstance(m, BNReLUConv) and m.conv.kernel_size == (1, 1, 1)
                          for m in fast.modules())
    units = sum(isinstance(m, MultiFiberUnit) for m in fast.modules())
    assert (pointwise_convs, units) == (40, 16)
    # each unit's multiplexer (two of those convs and the add) as one op
    assert counts.get(pointwise.MULTIPLEXER_PROFILED_AS) == units
    assert counts.get(pointwise.PROFILED_AS) == pointwise_convs - 2 * units
    assert counts.get("aten::mkldnn_convolution") == 1
    assert "aten::add_" not in counts  # every residual went into a conv's output


def test_the_fused_op_steps_aside_where_it_cannot_see_the_call_or_the_math_differs():
    torch.manual_seed(1)
    module = unit(16, 24)
    x = cl(torch.randn(1, 16, 2, 5, 5))
    args = (module.bn, module.relu, module.conv)
    with torch.inference_mode():
        assert pointwise.folds(*args, x)
        assert not pointwise.folds(*args, x.contiguous())  # NCDHW
        assert not pointwise.folds(*args, x.double())
        assert not pointwise.folds(*args, cl(torch.randn(1, 8, 2, 5, 5)))  # PyTorch's error says so
        seen = []
        hook = module.conv.register_forward_hook(lambda m, a, out: seen.append(out))
        assert not pointwise.folds(*args, x)  # a hook on the conv sees it called as a module
        close(module(x), expected(module, x))
        hook.remove()
        assert len(seen) == 1
    with torch.enable_grad():  # training needs the activations: the three modules
        assert not pointwise.folds(*args, x)
    module.bn.train()
    with torch.inference_mode():
        assert not pointwise.folds(*args, x)  # batch statistics
    module.bn.eval()
    fk.use_stock(module)  # the stock condition: plain BatchNorm3d, never fused
    with torch.inference_mode():
        assert not pointwise.folds(module.bn, module.relu, module.conv, x)
        close(module(x), expected(module, x))


def test_a_residual_that_cannot_go_in_is_added_after_or_refused_by_pytorch():
    torch.manual_seed(2)
    module = unit(8, 16)
    x = cl(torch.randn(1, 8, 2, 4, 4))
    with torch.inference_mode():
        want = expected(module, x)
        ncdhw = torch.randn(1, 16, 2, 4, 4)  # another layout: the fused op, then the add
        assert not pointwise.residual_fits(module.conv, x, ncdhw)
        close(module.plus(x, ncdhw), want + ncdhw)
        with pytest.raises(RuntimeError, match="size of tensor"):  # PyTorch's own one line
            module.plus(x, cl(torch.randn(1, 16, 3, 4, 4)))


def test_the_kernel_refuses_inputs_that_do_not_match_in_one_line():
    ext = fk.extension()
    x = cl(torch.randn(1, 8, 1, 2, 2))
    packed = ext.pack_pointwise(torch.randn(16, 8, 1, 1, 1), "avx2")
    with pytest.raises(RuntimeError, match="packed weight does not match"):
        ext.pointwise_cl(x, packed, 40, path="avx2")
    with pytest.raises(RuntimeError, match="does not match x's channels, cout and the path"):
        ext.pointwise_cl(x, packed, 16, path="avx512-emulated")  # 24 channels a chunk, not 48
    with pytest.raises(RuntimeError, match="no channels-last path sse"):
        ext.pointwise_cl(x, packed, 16, path="sse")
    with pytest.raises(RuntimeError, match="stride must be three positive integers"):
        ext.pointwise_cl(x, packed, 16, [1, 0, 1], path="avx2")
    with pytest.raises(RuntimeError, match="x must be a channels-last-3d fp32 CPU tensor"):
        ext.pointwise_cl(x.contiguous(), packed, 16, path="avx2")
    with pytest.raises(RuntimeError, match="one value per input channel"):
        ext.pointwise_cl(x, packed, 16, scale=torch.ones(4), shift=torch.zeros(4), path="avx2")
    grad = cl(torch.randn(1, 16, 1, 2, 2))
    with pytest.raises(RuntimeError, match="grad's shape does not match the conv's output"):
        ext.grad_weight_pointwise(x, grad, [1, 2, 1], "avx512-emulated")
    with pytest.raises(RuntimeError, match="x and grad must be channels-last-3d fp32"):
        ext.grad_weight_pointwise(x, grad.contiguous(), [1, 1, 1], "avx512-emulated")
    with pytest.raises(RuntimeError, match="residual must be channels-last-3d fp32"):
        ext.pointwise_cl(x, packed, 16, residual=cl(torch.randn(1, 16, 1, 2, 3)), path="avx2")
    with pytest.raises(RuntimeError, match="weight must be a CPU fp32"):
        ext.pack_pointwise(torch.randn(16, 8, 3, 1, 1), "avx2")


def test_inference_keeps_the_packed_weight_until_the_weight_changes():
    torch.manual_seed(3)
    module = unit(8, 8)
    x = cl(torch.randn(1, 8, 1, 3, 3))
    with torch.inference_mode():
        first = module(x)
        packed = module.conv.__dict__[pointwise.PACKED][1]
        module(x)
        assert module.conv.__dict__[pointwise.PACKED][1] is packed
    with torch.no_grad():
        module.conv.weight.mul_(2)
    with torch.inference_mode():
        close(module(x), 2 * first)
        assert module.conv.__dict__[pointwise.PACKED][1] is not packed


def _trained_pair(k: int, co: int, stride):
    """A training-mode unit on the suite's kernels and a copy of it on PyTorch's own."""
    import copy

    module = unit(k, co, stride).train()
    stock = copy.deepcopy(module)
    fk.use_stock(stock)
    return module, stock


@pytest.mark.parametrize("k, co, shape, stride", [
    (96, 24, (2, 3, 5, 7), (1, 1, 1)),    # MF-Net's narrowing multiplexer conv
    (13, 7, (2, 1, 5, 11), (1, 1, 1)),    # channels off the vector width, partial chunks
    (40, 50, (1, 3, 9, 11), (1, 1, 1)),   # more pixels than one task
    (16, 96, (2, 5, 7, 7), (2, 1, 1)),    # conv2's shortcut: every other frame
    (24, 48, (1, 2, 9, 11), (1, 2, 2)),   # conv3's: every other row and column, odd sizes
])
def test_training_runs_the_conv_on_the_kernel_with_pytorchs_gradients(k, co, shape, stride,
                                                                     monkeypatch, each_path):
    from torch.profiler import profile

    torch.manual_seed(k * 10 + co)
    module, stock = _trained_pair(k, co, stride)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    out = [(d - 1) // s + 1 for d, s in zip(shape[1:], stride)]
    residual = cl(torch.randn(shape[0], co, *out))
    grad = cl(torch.randn(shape[0], co, *out))
    assert pointwise.trains(module.bn, module.conv, x)
    assert not pointwise.trains(stock.bn, stock.conv, x)  # the stock condition: PyTorch's conv
    for with_residual in (False, True):
        results = []
        for net in (module, stock):
            net.zero_grad()
            xs, rs = x.clone().requires_grad_(), residual.clone().requires_grad_()
            with profile() as prof:
                y = net.plus(xs, rs) if with_residual else net(xs)
            y.backward(grad)
            ran = {e.key for e in prof.key_averages()}
            results.append((ran, y, xs.grad, rs.grad, net.conv.weight.grad, net.bn.weight.grad,
                            net.bn.bias.grad))
        (ran, *mine), (ran_stock, *theirs) = results
        assert pointwise.PROFILED_AS in ran and pointwise.PROFILED_AS not in ran_stock
        assert "aten::convolution" not in ran
        for got, want in zip(mine, theirs):
            if want is None:  # the residual's, without one
                assert got is None
            else:
                close(got, want, 1e-4)


def test_training_steps_aside_where_the_kernel_does_not_apply_and_needs_no_weight_grad(monkeypatch):
    torch.manual_seed(4)
    module, stock = _trained_pair(16, 24, (1, 1, 1))
    x = cl(torch.randn(2, 16, 2, 5, 5))
    assert pointwise.trains(module.bn, module.conv, x)
    assert "pointwise convs fused, and on the kernel in training" in fk.status()
    assert not pointwise.trains(module.bn, module.conv, x.contiguous())  # NCDHW
    assert not pointwise.trains(module.bn, module.conv, x.double())
    with torch.no_grad():  # no gradient: the folded op's business, or the modules'
        assert not pointwise.trains(module.bn, module.conv, x)
    hook = module.conv.register_forward_hook(lambda m, a, out: None)
    assert not pointwise.trains(module.bn, module.conv, x)  # a hook on the conv sees it called
    hook.remove()
    for net in (module, stock):  # a frozen conv: only the input's gradient
        net.conv.weight.requires_grad_(False)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    for net, xi in zip((module, stock), xs):
        net(xi).square().sum().backward()
    assert module.conv.weight.grad is None
    close(xs[0].grad, xs[1].grad, 1e-4)


@pytest.mark.parametrize("k, co", [(48, 12), (12, 40)])  # the conv's input gradient made twice, kept
def test_training_hands_back_the_input_for_its_other_uses_with_their_gradients(k, co, each_path):
    """``BNReLUConv.forward_shared`` on the kernel: ``x`` handed back for a unit's residual
    adds, their gradients added to x's in the backward's one pass; every gradient as the stock
    unit's, where autograd sums them."""
    torch.manual_seed(k + co)
    module, stock = _trained_pair(k, co, (1, 1, 1))
    x = cl(torch.randn(2, k, 3, 5, 7))
    weights = [cl(torch.randn(2, co, 3, 5, 7))] + [cl(torch.randn_like(x)) for _ in range(2)]
    grads = []
    for net in (module, stock):
        net.zero_grad()
        xs = x.clone().requires_grad_()
        y, *uses = net.forward_shared(xs, 2)
        assert len(uses) == 2
        sum(((t * w).sum() for t, w in zip((y, *uses), weights))).backward()
        grads.append((xs.grad, net.conv.weight.grad, net.bn.weight.grad, net.bn.bias.grad))
    for got, want in zip(*grads):
        close(got, want, 1e-4)


def test_training_with_a_frozen_batchnorm_folds_nothing_and_equals_pytorch():
    """An eval-mode BatchNorm with gradients wanted (fine-tuning with frozen statistics): the
    BatchNorm runs as PyTorch's, the conv on the kernel, every gradient as the stock unit's."""
    torch.manual_seed(5)
    module, stock = _trained_pair(24, 40, (1, 1, 1))
    module.bn.eval(), stock.bn.eval()
    x = cl(torch.randn(2, 24, 3, 5, 7))
    assert pointwise.trains(module.bn, module.conv, x)
    grads = []
    for net in (module, stock):
        xs = x.clone().requires_grad_()
        net(xs).square().sum().backward()
        grads.append((xs.grad, net.conv.weight.grad, net.bn.weight.grad))
    for got, want in zip(*grads):
        close(got, want, 1e-4)


@pytest.mark.parametrize("k, mid, shape", [
    (96, 24, (2, 3, 5, 7)),   # conv2's multiplexer: 96 -> 24 -> 96
    (13, 5, (1, 2, 7, 9)),    # channels off the vector width both ways
    (40, 30, (1, 3, 9, 11)),  # more pixels than one task, a partial chunk in the middle
])
def test_the_multiplexer_in_one_op_equals_its_two_convs_and_the_add(k, mid, shape, each_path):
    torch.manual_seed(k + mid)
    first, second = unit(k, mid), unit(mid, k)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    with torch.inference_mode():
        assert pointwise.multiplexes(first, second, x)
        y = pointwise.forward_multiplexed(first, second, x)
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        close(y, x + expected(second, expected(first, x)))


def test_the_multiplexer_steps_aside_where_an_op_would_hide_a_call_or_the_math_differs():
    torch.manual_seed(6)
    first, second = unit(16, 8), unit(8, 16)
    x = cl(torch.randn(1, 16, 2, 5, 5))
    with torch.inference_mode():
        assert pointwise.multiplexes(first, second, x)
        assert not pointwise.multiplexes(first, unit(8, 12), x)  # not back to x's channels
        assert not pointwise.multiplexes(first, unit(8, 16, (1, 2, 2)), x)  # strided
        assert not pointwise.multiplexes(first, second, x.contiguous())  # NCDHW
        for module in (first, second, first.conv, second.bn):  # each would miss its call
            hook = module.register_forward_hook(lambda m, a, out: None)
            assert not pointwise.multiplexes(first, second, x)
            hook.remove()
    with torch.enable_grad():
        assert not pointwise.multiplexes(first, second, x)
    fk.use_stock(second)
    with torch.inference_mode():
        assert not pointwise.multiplexes(first, second, x)


def test_the_multiplexer_op_refuses_inputs_that_do_not_match_in_one_line():
    ext = fk.extension()
    x = cl(torch.randn(1, 8, 1, 2, 2))
    p1 = ext.pack_pointwise(torch.randn(4, 8, 1, 1, 1), "avx2")
    p2 = ext.pack_pointwise(torch.randn(8, 4, 1, 1, 1), "avx2")
    s8, s4 = torch.ones(8), torch.ones(4)
    with pytest.raises(RuntimeError, match="a packed weight does not match"):
        ext.multiplexer_cl(x, p2, 4, s8, s8, p2, s4, s4, "avx2")
    with pytest.raises(RuntimeError, match="a packed weight does not match"):
        ext.multiplexer_cl(x, p1, 4, s8, s8, p2, s4, s4, "avx512-emulated")
    with pytest.raises(RuntimeError, match="one value per input channel"):
        ext.multiplexer_cl(x, p1, 4, s8, s8, p2, s8, s8, "avx2")
    with pytest.raises(RuntimeError, match="x must be a channels-last-3d fp32 CPU tensor"):
        ext.multiplexer_cl(x.contiguous(), p1, 4, s8, s8, p2, s4, s4, "avx2")
