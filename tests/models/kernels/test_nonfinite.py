"""A kernel never changes what a model computes, NaN and Inf included: each fused op propagates
NaN and Inf as the stock modules do, forward and backward, on every path, with a non-finite value
in the input, a BatchNorm's statistics or affine, or a conv's weight. One difference is allowed:
a gradient PyTorch makes infinite may be NaN here (the fused backward adds its terms in another
order), never finite (docs/kernels.md)."""

import copy
import random

import pytest
import torch

from models.kernels import rewrite
from models.mfnet import VIDEO, MultiFiberUnit
from tests.models.kernels.helpers import cl, pre_activation, randomise

# (in channels, out channels, kernel, groups): a pointwise conv, a fiber conv, a narrow fiber conv
MODULES = [(24, 48, (1, 1, 1), 1), (32, 32, (3, 3, 3), 4), (24, 24, (3, 3, 3), 4)]
PLACES = ["input", "running_mean", "running_var", "bn_weight", "conv_weight"]


def same_nonfinite(a: torch.Tensor, b: torch.Tensor) -> bool:
    """NaN where the other has NaN, +Inf and -Inf alike; the finite values close."""
    if not (torch.equal(a.isnan(), b.isnan()) and torch.equal(a == float("inf"), b == float("inf"))
            and torch.equal(a == float("-inf"), b == float("-inf"))):
        return False
    finite = a.isfinite()
    if not finite.any():
        return True
    return torch.allclose(a[finite], b[finite], rtol=1e-3, atol=1e-3 * max(1.0, b[finite].abs().max().item()))


def inject(module, x, place: str, value: float, rng: random.Random):
    bn, _, conv = module._modules.values()
    with torch.no_grad():
        if place == "input":
            x[tuple(rng.randrange(n) for n in x.shape)] = value
        elif place == "conv_weight":
            conv.weight[tuple(rng.randrange(n) for n in conv.weight.shape)] = value
        else:
            target = {"running_mean": bn.running_mean, "running_var": bn.running_var, "bn_weight": bn.weight}[place]
            target[rng.randrange(target.numel())] = value if place != "running_var" or value > 0 else float("nan")


@pytest.mark.parametrize("shape", MODULES)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_inference_propagates_nan_and_inf_as_the_stock_modules_do(shape, place, value, each_path):
    k, co, kernel, groups = shape
    rng = random.Random(hash((shape, place, value)) & 0xFFFF)
    torch.manual_seed(rng.randrange(1000))
    fused = pre_activation(k, co, kernel, groups=groups)
    x = cl(torch.randn(2, k, 3, 5, 7))
    inject(fused, x, place, value, rng)
    stock = rewrite.use_stock_kernels(copy.deepcopy(fused))
    with torch.inference_mode():
        got, want = fused(x), stock(x)
    if value != value:  # NaN passes the ReLU, so the stock modules give NaN: the case at hand
        assert want.isnan().any()
    assert same_nonfinite(got, want)


@pytest.mark.parametrize("shape", MODULES)
@pytest.mark.parametrize("place", ["input", "bn_weight", "conv_weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_training_propagates_nan_and_inf_as_the_stock_modules_do(shape, place, value, each_path):
    k, co, kernel, groups = shape
    rng = random.Random(hash((shape, place, value)) & 0xFFFF)
    fused = pre_activation(k, co, kernel, groups=groups).train()
    x = cl(torch.randn(2, k, 3, 5, 7))
    inject(fused, x, place, value, rng)
    stock = rewrite.use_stock_kernels(copy.deepcopy(fused))
    results = []
    for net in (fused, stock):
        xs = x.clone().requires_grad_()
        y = net(xs)
        y.backward(torch.ones_like(y))
        results.append([y, xs.grad, net.conv.weight.grad, net.bn.weight.grad])
    (y, *grads), (y_stock, *grads_stock) = results
    assert same_nonfinite(y.detach(), y_stock)
    for got, want in zip(grads, grads_stock):  # the input's, conv weight's and BN weight's gradients
        if value != value:
            assert same_nonfinite(got, want)
        else:  # the fused backward sums its terms in another order: an Inf there may be NaN here
            assert torch.equal(got.isfinite(), want.isfinite())
            assert torch.allclose(got[got.isfinite()], want[want.isfinite()], rtol=1e-3, atol=1e-3)


def test_a_multi_fiber_unit_with_a_nan_gives_nan_logits_as_the_stock_one_does(each_path):
    torch.manual_seed(0)
    plain = MultiFiberUnit(VIDEO, 32, 48, 32, groups=4)
    for bn in (m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        randomise(bn)
    fused = rewrite.optimize(copy.deepcopy(plain))
    x = cl(torch.randn(1, 32, 3, 5, 7))
    for module in (plain.conv_i1.bn, fused.conv_i1.bn):
        with torch.no_grad():
            module.running_mean[3] = float("nan")  # a statistic gone bad, as a diverged run's would
    with torch.inference_mode():
        assert same_nonfinite(fused(x), plain.eval()(x))
        assert fused(x).isnan().any()
