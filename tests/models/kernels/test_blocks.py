"""The fused blocks (models/kernels/blocks.py): a pre-activation conv (BatchNorm, ReLU, then a
fiber or pointwise conv) as one op in inference and in training, the residual added in the
conv's output, x handed back for its other uses, the multiplexer as one op, and a multi-fiber
unit fused as a whole; each against the plain modules, and where each steps aside."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from models.kernels import rewrite
from models.kernels.blocks import PreActConv3d, multiplexes
from models.kernels.modules import PACKED
from models.kernels.ops import fiber, pointwise
from models.mfnet import VIDEO, MultiFiberUnit
from tests.models.kernels.helpers import cl, close, near, pre_activation, randomise


def expected(module, x, residual=None):
    """``conv(relu(bn(x))) (+ residual)`` as PyTorch computes it (eval-mode BatchNorm)."""
    bn, _, conv = module._modules.values()
    y = F.conv3d(torch.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)),
                 conv.weight, stride=conv.stride, padding=conv.padding, groups=conv.groups)
    return y if residual is None else y + residual


def stock_twin(module):
    """A copy of ``module`` on PyTorch's own kernels."""
    return rewrite.use_stock_kernels(copy.deepcopy(module))


@pytest.mark.parametrize("k, co, shape, stride", [
    (96, 24, (2, 3, 5, 7), (1, 1, 1)),    # MF-Net's narrowing multiplexer conv: whole chunks of 24
    (24, 96, (1, 4, 6, 6), (1, 1, 1)),    # its widening one: 4 chunks per pixel
    (16, 16, (1, 2, 3, 3), (1, 1, 1)),    # 2 vectors a chunk: 6-pixel blocks
    (13, 7, (2, 1, 5, 11), (1, 1, 1)),    # channels off the vector width: tails in, partial vector out
    (5, 40, (1, 1, 7, 7), (1, 1, 1)),     # a 16-channel last chunk
    (8, 3, (3, 2, 4, 9), (1, 1, 1)),      # fewer output channels than a vector
    (40, 50, (1, 3, 9, 11), (1, 1, 1)),   # pixels past one 48-pixel task, a 2-channel last chunk
    (16, 96, (2, 5, 7, 7), (2, 1, 1)),    # conv2's shortcut: every other frame
    (96, 192, (1, 2, 9, 11), (1, 2, 2)),  # conv3's: every other row and column, odd sizes
])
def test_inference_runs_a_pointwise_pre_activation_conv_in_one_op(k, co, shape, stride, each_path):
    torch.manual_seed(k * 100 + co)
    module = pre_activation(k, co, stride=stride)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    residual = cl(torch.randn(shape[0], co, *[(d - 1) // s + 1 for d, s in zip(shape[1:], stride)]))
    with torch.inference_mode():
        with profile() as prof:
            y, with_residual = module(x), module(x, residual)
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        near(y, expected(module, x))
        near(with_residual, expected(module, x, residual))
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get(pointwise.PROFILED_AS) == 2 and "aten::convolution" not in counts


@pytest.mark.parametrize("cin_g, cout_g, kt, stride", [
    (6, 6, 1, (1, 1, 1)), (12, 12, 3, (1, 1, 1)), (20, 24, 1, (1, 1, 1)), (6, 12, 3, (1, 2, 2)),
    (48, 48, 1, (1, 1, 1))])
def test_inference_adds_a_residual_to_a_fiber_conv_as_the_output_is_written(cin_g, cout_g, kt, stride):
    """MF-Net's ``conv_m2(...) + x``: the residual added to each output row as the kernel writes
    it, planar and broadcast forms, strided; one frame of one clip (too few tasks for whole blocks
    of groups); a residual of another shape refused in one line; a hook on the module still sees
    it called."""
    torch.manual_seed(cout_g + kt)
    module = pre_activation(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, groups=4)
    x = cl(torch.randn(2, 4 * cin_g, 5, 13, 19))
    with torch.inference_mode():
        plain = expected(module, x)
        residual = cl(torch.randn_like(plain))
        close(module(x, residual), plain + residual)
        one = cl(x[:1, :, :1])
        want = expected(module, one)
        extra = cl(torch.randn_like(want))
        close(module(one, extra), want + extra)
        short = cl(residual[:, :, :-1])  # a frame short: PyTorch's add says so
        with pytest.raises(RuntimeError, match="size of tensor"):
            module(x, short)
        seen = []
        hook = module.register_forward_hook(lambda m, args, out: seen.append(out))
        close(module(x, residual), plain + residual)
        hook.remove()
    assert len(seen) == 1


def test_inference_steps_aside_where_it_cannot_see_the_call_or_the_math_differs():
    torch.manual_seed(1)
    module = pre_activation(16, 24)
    bn, _, conv = module._modules.values()
    x = cl(torch.randn(1, 16, 2, 5, 5))
    with torch.inference_mode():
        assert module._fuses(x)
        assert not module._fuses(x.contiguous())  # NCDHW
        assert not module._fuses(x.double())
        assert not module._fuses(cl(torch.randn(1, 8, 2, 5, 5)))  # PyTorch's error says so
        seen = []
        hook = conv.register_forward_hook(lambda m, a, out: seen.append(out))
        assert not module._fuses(x)  # a hook on the conv sees it called as a module
        near(module(x), expected(module, x))
        hook.remove()
        assert len(seen) == 1
    rewrite.use_stock_kernels(module)  # the stock condition: the three modules, never fused
    with torch.inference_mode():
        near(module(x), expected(module, x))


def test_inference_keeps_the_packed_pointwise_weight_until_the_weight_changes():
    torch.manual_seed(3)
    module = pre_activation(8, 8)
    conv = module.conv
    x = cl(torch.randn(1, 8, 1, 3, 3))
    with torch.inference_mode():
        first = module(x)
        packed = conv.__dict__[PACKED][1]
        module(x)
        assert conv.__dict__[PACKED][1] is packed
    with torch.no_grad():
        conv.weight.mul_(2)
    with torch.inference_mode():
        near(module(x), 2 * first)
        assert conv.__dict__[PACKED][1] is not packed


def _run(net, x, residual, grad):
    """(ops run, [output, every gradient, running statistics], the output's grad_fn) of one
    training call of ``net``."""
    net.zero_grad()
    xs, rs = x.clone().requires_grad_(), None if residual is None else residual.clone().requires_grad_()
    with profile() as prof:
        y = net(xs) if rs is None else net(xs, rs) if isinstance(net, PreActConv3d) else net(xs) + rs
    made_by = y.grad_fn.name()
    y.backward(grad)
    ran = {e.key for e in prof.key_averages()}
    return ran, [y, xs.grad, None if rs is None else rs.grad, net.conv.weight.grad, net.bn.weight.grad,
                 net.bn.bias.grad, net.bn.running_mean.clone(), net.bn.running_var.clone()], made_by


def _same(mine, theirs, tol=1e-4):
    for got, want in zip(mine, theirs):
        if want is None:
            assert got is None
        else:
            close(got, want, tol)


@pytest.mark.parametrize("k, co, shape, stride", [
    (96, 24, (2, 3, 5, 7), (1, 1, 1)),    # MF-Net's narrowing multiplexer conv
    (13, 7, (2, 1, 5, 11), (1, 1, 1)),    # channels off the vector width, partial chunks
    (40, 50, (1, 3, 9, 11), (1, 1, 1)),   # more pixels than one task
    (16, 96, (2, 5, 7, 7), (2, 1, 1)),    # conv2's shortcut: every other frame
    (24, 48, (1, 2, 9, 11), (1, 2, 2)),   # conv3's: every other row and column, odd sizes
])
def test_training_folds_batchnorm_and_relu_into_a_pointwise_conv(k, co, shape, stride, each_path):
    torch.manual_seed(k * 10 + co)
    module = pre_activation(k, co, stride=stride).train()
    stock = stock_twin(module)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    out = [(d - 1) // s + 1 for d, s in zip(shape[1:], stride)]
    residual, grad = cl(torch.randn(shape[0], co, *out)), cl(torch.randn(shape[0], co, *out))
    for res in (None, residual):
        (ran, mine, _), (ran_stock, theirs, _) = _run(module, x, res, grad), _run(stock, x, res, grad)
        assert pointwise.PROFILED_AS in ran and pointwise.PROFILED_AS not in ran_stock
        assert "aten::convolution" not in ran
        _same(mine, theirs)


@pytest.mark.parametrize("cin_g, cout_g, kt, stride, folded", [
    (24, 24, 3, (1, 1, 1), True), (12, 24, 3, (1, 2, 2), True), (6, 12, 1, (1, 2, 2), True),
    (48, 48, 1, (1, 1, 1), True), (6, 6, 3, (1, 1, 1), False)])
def test_training_folds_batchnorm_and_relu_where_the_weight_gradient_packs_its_input(
        cin_g, cout_g, kt, stride, folded):
    """A fiber pre-activation conv in training: BatchNorm + ReLU folded into the conv's packing
    (``BNReLUFiberFunction``) where the weight gradient packs its input, the narrow form (which
    reads it in place) left as it is; with and without a residual, every gradient and the
    running statistics as PyTorch's."""
    torch.manual_seed(cin_g + cout_g + kt)
    module = pre_activation(4 * cin_g, 4 * cout_g, (kt, 3, 3), stride, groups=4).train()
    stock = stock_twin(module)
    x = cl(torch.randn(2, 4 * cin_g, 4, 9, 11) * 2)
    assert module.conv.folds_in_training() == folded
    out_shape = fiber.reference(x, module.conv.weight, 4, stride).shape
    residual, grad = cl(torch.randn(out_shape)), torch.randn(out_shape)
    for res in (None, residual):
        _, mine, made_by = _run(module, x, res, grad)
        assert ("BNReLUFiberFunction" in made_by) == folded
        _same(mine, _run(stock, x, res, grad)[1])


def test_training_keeps_a_hooked_batchnorm_a_module_of_its_own():
    """A hook on the BatchNorm before a pointwise or a fiber conv sees it called in training: the
    ops that fold it into the conv step aside."""
    torch.manual_seed(6)
    for module in (pre_activation(48, 96).train(), pre_activation(96, 96, (3, 3, 3), groups=4).train()):
        x = cl(torch.randn(2, module.bn.num_features, 3, 5, 7)).requires_grad_()
        seen = []
        hook = module.bn.register_forward_hook(lambda m, args, out, seen=seen: seen.append(out))
        module(x).sum().backward()
        module(x, module(x).detach())  # with a residual
        hook.remove()
        assert len(seen) == 3 and x.grad is not None


def test_training_steps_aside_where_the_kernel_does_not_apply_and_needs_no_weight_grad():
    from models import kernels

    torch.manual_seed(4)
    module = pre_activation(16, 24).train()
    stock = stock_twin(module)
    x = cl(torch.randn(2, 16, 2, 5, 5))
    assert module._fuses(x) and "pointwise convs fused, and on the kernel in training" in kernels.status()
    assert not module._fuses(x.contiguous()) and not module._fuses(x.double())
    hook = module.conv.register_forward_hook(lambda m, a, out: None)
    assert not module._fuses(x)  # a hook on the conv sees it called
    hook.remove()
    for net in (module, stock):  # a frozen conv: only the input's gradient
        net.conv.weight.requires_grad_(False)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    for net, xi in zip((module, stock), xs):
        net(xi).square().sum().backward()
    assert module.conv.weight.grad is None
    close(xs[0].grad, xs[1].grad)


@pytest.mark.parametrize("k, co", [(48, 12), (12, 40)])  # the conv's input gradient made twice, kept
def test_training_hands_back_the_input_for_its_other_uses_with_their_gradients(k, co, each_path):
    """``forward_shared`` on the kernel: ``x`` handed back for a unit's residual adds, their
    gradients added to x's in the backward's one pass; every gradient as the stock module's,
    where autograd sums them."""
    torch.manual_seed(k + co)
    module = pre_activation(k, co).train()
    stock = stock_twin(module)
    x = cl(torch.randn(2, k, 3, 5, 7))
    weights = [cl(torch.randn(2, co, 3, 5, 7))] + [cl(torch.randn_like(x)) for _ in range(2)]
    grads = []
    for net in (module, stock):
        net.zero_grad()
        xs = x.clone().requires_grad_()
        y, *uses = net.forward_shared(xs, 2) if net is module else (net(xs), xs, xs)
        assert len(uses) == 2
        sum(((t * w).sum() for t, w in zip((y, *uses), weights))).backward()
        grads.append((xs.grad, net.conv.weight.grad, net.bn.weight.grad, net.bn.bias.grad))
    _same(*grads)


def test_training_with_a_frozen_batchnorm_folds_nothing_and_equals_pytorch():
    """An eval-mode BatchNorm with gradients wanted (fine-tuning with frozen statistics): the
    BatchNorm runs as PyTorch's, the conv on the kernel, every gradient as the stock module's."""
    torch.manual_seed(5)
    module = pre_activation(24, 40)  # eval mode
    stock = stock_twin(module)
    x = cl(torch.randn(2, 24, 3, 5, 7))
    grads = []
    for net in (module, stock):
        xs = x.clone().requires_grad_()
        y = net(xs)
        y.square().sum().backward()
        grads.append((xs.grad, net.conv.weight.grad, net.bn.weight.grad))
    assert y.grad_fn is not None
    _same(*grads)


@pytest.mark.parametrize("k, mid, shape", [
    (96, 24, (2, 3, 5, 7)),   # conv2's multiplexer: 96 -> 24 -> 96
    (13, 5, (1, 2, 7, 9)),    # channels off the vector width both ways
    (40, 30, (1, 3, 9, 11)),  # more pixels than one task, a partial chunk in the middle
])
def test_the_multiplexer_in_one_op_equals_its_two_convs_and_the_add(k, mid, shape, each_path):
    torch.manual_seed(k + mid)
    first, second = pre_activation(k, mid), pre_activation(mid, k)
    x = cl(torch.randn(shape[0], k, *shape[1:]) * 2)
    with torch.inference_mode():
        assert multiplexes(first, second, x)
        a, b = first.parts, second.parts
        from models.kernels.support import eval_affine

        y = pointwise.multiplexed(x, a[2].packed(), mid, eval_affine(a[0]), b[2].packed(), eval_affine(b[0]))
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        near(y, x + expected(second, expected(first, x)))


def test_the_multiplexer_steps_aside_where_an_op_would_hide_a_call_or_the_math_differs():
    torch.manual_seed(6)
    first, second = pre_activation(16, 8), pre_activation(8, 16)
    x = cl(torch.randn(1, 16, 2, 5, 5))
    with torch.inference_mode():
        assert multiplexes(first, second, x)
        assert not multiplexes(first, pre_activation(8, 12), x)  # not back to x's channels
        assert not multiplexes(first, pre_activation(8, 16, stride=(1, 2, 2)), x)  # strided
        assert not multiplexes(first, second, x.contiguous())  # NCDHW
        for module in (first, second, first.conv, second.bn):  # each would miss its call
            hook = module.register_forward_hook(lambda m, a, out: None)
            assert not multiplexes(first, second, x)
            hook.remove()
    with torch.enable_grad():
        assert not multiplexes(first, second, x)


@pytest.mark.parametrize("first", [True, False])
def test_a_fused_multi_fiber_unit_equals_the_plain_unit_in_inference_and_training(first):
    """The fused unit's wiring is the plain unit's: the same output in inference (the
    multiplexer as one op, the residual in conv_m2's output) and the same output, gradients and
    running statistics in training (x's residual uses through the multiplexer's BatchNorm)."""
    from models.kernels.blocks import FusedMultiFiberUnit

    torch.manual_seed(first)
    plain = MultiFiberUnit(VIDEO, 32, 48, 48 if first else 32, groups=4, first=first,
                           stride=(2, 2, 2) if first else (1, 1, 1))
    for bn in (m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        randomise(bn)
    fused = rewrite.optimize(copy.deepcopy(plain))
    assert isinstance(fused, FusedMultiFiberUnit) and list(fused.state_dict()) == list(plain.state_dict())
    x = cl(torch.randn(2, 32, 4, 9, 11))
    with torch.inference_mode(), profile() as prof:
        close(fused.eval()(x), plain.eval()(x))
    assert {e.key: e.count for e in prof.key_averages()}.get(pointwise.MULTIPLEXER_PROFILED_AS) == 1
    grad = torch.randn_like(plain(x))
    results = []
    for net in (fused.train(), plain.train()):
        xs = x.clone().requires_grad_()
        y = net(xs)
        y.backward(grad)
        results.append([y, xs.grad, *[p.grad for p in net.parameters()], *net.buffers()])
    for got, want in zip(*results):
        close(got.float(), want.float())
