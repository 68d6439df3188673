"""What the kernel library's tests share: tolerances, layouts, trained-looking BatchNorms, and
the reference every fiber conv is checked against."""

import torch
from torch import nn

from models.kernels import rewrite
from models.kernels.ops import fiber
from models.mfnet import VIDEO, BNReLUConv


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def close(a, b, rtol=1e-4):
    """Equal within fp32 tolerance, relative to the larger values (sums of hundreds of terms)."""
    scale = b.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale).item() < rtol


def near(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))


def randomise(bn: nn.BatchNorm3d) -> nn.BatchNorm3d:
    """Trained-looking statistics and affine (negative scales flip the ReLU's mask), eval mode."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def check_against_reference(x, weight, groups, stride=(1, 1, 1)):
    """The fiber conv's output and both gradients equal PyTorch's conv's."""
    x1, w1 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y1, y2 = fiber.fiber_conv3d(x1, w1, groups, stride), fiber.reference(x2, w2, groups, stride)
    close(y1, y2)
    grad = torch.randn_like(y2)
    y1.backward(grad)
    y2.backward(grad)
    close(x1.grad, x2.grad)
    close(w1.grad, w2.grad)


def pre_activation(k: int, co: int, kernel=(1, 1, 1), stride=(1, 1, 1), groups: int = 1) -> BNReLUConv:
    """MF-Net's pre-activation conv (BatchNorm, ReLU, conv) on the kernels, trained-looking and in
    eval mode; a fiber conv where ``groups`` > 1."""
    padding = (kernel[0] // 2, 1, 1) if groups > 1 else (0, 0, 0)
    module = BNReLUConv(VIDEO, k, co, kernel, stride, padding, groups=groups)
    nn.init.normal_(module.conv.weight, std=(k // groups * kernel[0] * (9 if groups > 1 else 1)) ** -0.5)
    randomise(module.bn)
    rewrite.optimize(module)
    rewrite.fuse(module)  # a lone pointwise conv: no fiber conv tells optimize to go on
    return module
