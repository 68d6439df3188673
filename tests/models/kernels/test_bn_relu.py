"""BatchNorm + ReLU in one pass (BatchNormReLU3d, models/kernels/ops/bn_relu.py) against
``relu(BatchNorm3d(x))``: the output, every gradient and the running statistics, in training and
in eval mode, and where it steps aside for PyTorch's own."""

import copy

import pytest
import torch
from torch import nn

from models.kernels import build, rewrite
from models.kernels.modules import BatchNormReLU3d
from tests.models.kernels.helpers import near


def pair(channels: int, **kwargs) -> tuple[nn.BatchNorm3d, BatchNormReLU3d]:
    reference = nn.BatchNorm3d(channels, **kwargs)
    if reference.affine:
        with torch.no_grad():
            reference.weight.uniform_(-1.5, 1.5)  # negative scales flip the ReLU's mask
            reference.bias.uniform_(-0.5, 0.5)
    fused = copy.deepcopy(reference)
    fused.__class__ = BatchNormReLU3d
    return reference, fused


def channels_last(*shape, offset=0.0) -> torch.Tensor:
    return (torch.randn(shape) * 2 + offset).contiguous(memory_format=torch.channels_last_3d)


def close(a, b, tol=1e-5):
    near(a, b, tol)


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 16, 3, 5, 7), {}),
    ((1, 13, 2, 9, 9), {}),  # channels not a multiple of 8: the scalar tail
    ((3, 24, 1, 70, 3), {"momentum": None}),  # more rows than one block; cumulative average
    ((2, 8, 2, 4, 4), {"affine": False}),
    ((2, 8, 2, 4, 4), {"track_running_stats": False}),
])
def test_training_mode_equals_batchnorm_then_relu(shape, kwargs):
    torch.manual_seed(0)
    reference, fused = pair(shape[1], **kwargs)
    for step in range(2):  # the second step starts from updated running statistics
        x = channels_last(*shape, offset=30.0 * step)  # a large mean: the variance must not cancel
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = torch.relu(reference(x1)), fused(x2)
        assert fused.applies(x2) and y2.is_contiguous(memory_format=torch.channels_last_3d)
        close(y2, y1)
        grad = torch.randn_like(y1)
        y1.backward(grad)
        y2.backward(grad)
        close(x2.grad, x1.grad, 1e-4)
        if reference.affine:
            close(fused.weight.grad, reference.weight.grad, 1e-4)
            close(fused.bias.grad, reference.bias.grad, 1e-4)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if getattr(reference, name) is not None:
                close(getattr(fused, name).float(), getattr(reference, name).float())


@pytest.mark.parametrize("shared, used", [(2, (True, True)), (2, (False, True)), (1, (True,))])
def test_shared_uses_of_the_input_get_their_gradients_in_the_backward_pass(shared, used):
    """``forward_shared``: ``x`` handed back for its other uses (a unit's residual adds), their
    gradients added as grad x is written, equal to autograd summing them; an unused one is
    skipped, and a CPU path the kernel does not take hands back ``x`` itself."""
    torch.manual_seed(shared)
    reference, fused = pair(24)
    x = channels_last(2, 24, 3, 5, 7)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y2, *uses = fused.forward_shared(x2, shared)
    assert len(uses) == shared and all(u.data_ptr() == x2.data_ptr() for u in uses)
    weights = [torch.randn_like(x) for _ in range(shared + 1)]
    (torch.relu(reference(x1)) * weights[0]).sum().backward(retain_graph=True)
    (y2 * weights[0]).sum().backward(retain_graph=True)
    for u, w, use in zip(uses, weights[1:], used):
        if use:
            (x1 * w).sum().backward(retain_graph=True)
            (u * w).sum().backward(retain_graph=True)
    close(x2.grad, x1.grad, 1e-4)
    close(fused.weight.grad, reference.weight.grad, 1e-4)
    with torch.no_grad():
        y, *same = fused.forward_shared(x, shared)
    assert all(u is x for u in same)


def test_eval_mode_without_gradients_uses_the_running_statistics():
    torch.manual_seed(1)
    reference, fused = pair(20)
    with torch.no_grad():
        reference.running_mean.uniform_(-1, 1)
        reference.running_var.uniform_(0.5, 2)
    fused.load_state_dict(reference.state_dict())
    reference.eval(), fused.eval()
    x = channels_last(2, 20, 3, 6, 6)
    with torch.no_grad():
        assert fused.applies(x)
        close(fused(x), torch.relu(reference(x)))
        for bn in (reference, fused):  # the kept affine follows the statistics it came from
            bn.running_mean.add_(0.5)
            bn.weight.mul_(-1)
        close(fused(x), torch.relu(reference(x)))


def test_relu_keeps_a_nan_as_pytorch_does():
    reference, fused = pair(8)
    reference.eval(), fused.eval()
    x = channels_last(1, 8, 2, 3, 3)
    x[0, 3, 1, 1, 1] = float("nan")
    with torch.no_grad():
        assert fused(x).isnan().sum() == torch.relu(reference(x)).isnan().sum() == 1


@pytest.mark.parametrize("case", ["ncdhw", "eval with gradients", "fp64"])
def test_where_it_does_not_apply_it_is_batchnorm_then_relu(case):
    torch.manual_seed(2)
    reference, fused = pair(8)
    x = channels_last(2, 8, 2, 5, 5)
    if case == "ncdhw":
        x = x.contiguous()
    elif case == "eval with gradients":
        reference.eval(), fused.eval()
    else:
        reference.double(), fused.double()
        x = x.double()
    assert not fused.applies(x)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = torch.relu(reference(x1)), fused(x2)
    close(y2, y1)
    y1.sum().backward()
    y2.sum().backward()
    close(x2.grad, x1.grad)


def test_the_kernel_refuses_malformed_arguments_in_one_line():
    ext = build.extension()
    x = channels_last(1, 8, 2, 3, 3)
    with pytest.raises(RuntimeError, match="bn_relu: scale must be 8 contiguous fp32 CPU floats"):
        ext.affine_relu(x, torch.ones(7), torch.zeros(8))
    with pytest.raises(RuntimeError, match="bn_relu: x must be a channels-last-3d fp32 or bf16 CPU tensor"):
        ext.bn_stats(x.contiguous())
    with pytest.raises(RuntimeError, match="bn_relu: x must be a channels-last-3d fp32 or bf16 CPU tensor"):
        ext.bn_stats(x.half())
    with pytest.raises(RuntimeError, match="bn_relu: grad and x differ in shape"):
        ext.bn_relu_backward(channels_last(1, 8, 2, 3, 4), x, *([torch.ones(8)] * 4))
    with pytest.raises(RuntimeError, match="bn_relu: grad and x differ in dtype"):
        ext.bn_relu_backward(x.to(torch.bfloat16), x, *([torch.ones(8)] * 4))
    with pytest.raises(RuntimeError, match="affine_relu takes fp32"):
        ext.affine_relu(x.to(torch.bfloat16), torch.ones(8), torch.zeros(8))


def test_a_wrong_channel_count_gets_pytorch_s_own_error():
    _, fused = pair(8)
    with pytest.raises(RuntimeError, match="running_mean should contain 6 elements not 8"):
        fused(channels_last(2, 6, 2, 3, 3))


def test_fusing_pairs_only_a_sequential_s_batchnorm_then_relu_and_keeps_the_keys():
    model = nn.Sequential(nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 4, 1),
                          nn.BatchNorm3d(4), nn.Conv3d(4, 4, 1), nn.ReLU(),
                          nn.Sequential(nn.ReLU(), nn.BatchNorm3d(4), nn.ReLU()))
    keys = list(model.state_dict())
    x = channels_last(2, 4, 2, 3, 3)
    expected = model(x)
    rewrite.fuse(model)
    assert [type(m).__name__ for m in model] == ["BatchNormReLU3d", "FusedReLU", "Conv3d",
                                                 "BatchNorm3d", "Conv3d", "ReLU", "Sequential"]
    assert [type(m).__name__ for m in model[6]] == ["ReLU", "BatchNormReLU3d", "FusedReLU"]
    assert list(model.state_dict()) == keys
    close(model(x), expected)
    rewrite.use_stock_kernels(model)
    assert [type(m).__name__ for m in model.modules()] == [
        "Sequential", "BatchNorm3d", "ReLU", "Conv3d", "BatchNorm3d", "Conv3d", "ReLU", "Sequential",
        "ReLU", "BatchNorm3d", "ReLU"]
