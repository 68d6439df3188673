"""The pointwise ops' C++ (models/kernels/csrc/pointwise_cl.cpp) refuses what does not match in
one line. What they compute is checked through the blocks that run them (test_blocks.py)."""

import pytest
import torch

from models.kernels import build
from tests.models.kernels.helpers import cl


def test_the_kernel_refuses_inputs_that_do_not_match_in_one_line():
    ext = build.extension()
    avx2, wide = ext.isa("avx2"), ext.isa("avx512-emulated")
    x = cl(torch.randn(1, 8, 1, 2, 2))
    packed = ext.pack_pointwise(torch.randn(16, 8, 1, 1, 1), avx2)
    with pytest.raises(RuntimeError, match="packed weight does not match"):
        ext.pointwise_cl(x, packed, 40, isa=avx2)
    with pytest.raises(RuntimeError, match="does not match x's channels, cout and the path"):
        ext.pointwise_cl(x, packed, 16, isa=wide)  # 24 channels a chunk, not 48
    with pytest.raises(RuntimeError, match="stride must be three positive integers"):
        ext.pointwise_cl(x, packed, 16, [1, 0, 1], isa=avx2)
    with pytest.raises(RuntimeError, match="x must be a channels-last-3d fp32 CPU tensor"):
        ext.pointwise_cl(x.contiguous(), packed, 16, isa=avx2)
    with pytest.raises(RuntimeError, match="one value per input channel"):
        ext.pointwise_cl(x, packed, 16, scale=torch.ones(4), shift=torch.zeros(4), isa=avx2)
    grad = cl(torch.randn(1, 16, 1, 2, 2))
    with pytest.raises(RuntimeError, match="grad's shape does not match the conv's output"):
        ext.grad_weight_pointwise(x, grad, [1, 2, 1], wide)
    with pytest.raises(RuntimeError, match="x and grad must be channels-last-3d fp32"):
        ext.grad_weight_pointwise(x, grad.contiguous(), [1, 1, 1], wide)
    with pytest.raises(RuntimeError, match="residual must be channels-last-3d fp32"):
        ext.pointwise_cl(x, packed, 16, residual=cl(torch.randn(1, 16, 1, 2, 3)), isa=avx2)
    with pytest.raises(RuntimeError, match="weight must be a CPU fp32"):
        ext.pack_pointwise(torch.randn(16, 8, 3, 1, 1), avx2)


def test_the_multiplexer_op_refuses_inputs_that_do_not_match_in_one_line():
    ext = build.extension()
    avx2 = ext.isa("avx2")
    x = cl(torch.randn(1, 8, 1, 2, 2))
    p1 = ext.pack_pointwise(torch.randn(4, 8, 1, 1, 1), avx2)
    p2 = ext.pack_pointwise(torch.randn(8, 4, 1, 1, 1), avx2)
    s8, s4 = torch.ones(8), torch.ones(4)
    with pytest.raises(RuntimeError, match="a packed weight does not match"):
        ext.multiplexer_cl(x, p2, 4, s8, s8, p2, s4, s4, avx2)
    with pytest.raises(RuntimeError, match="a packed weight does not match"):
        ext.multiplexer_cl(x, p1, 4, s8, s8, p2, s4, s4, ext.isa("avx512-emulated"))
    with pytest.raises(RuntimeError, match="one value per input channel"):
        ext.multiplexer_cl(x, p1, 4, s8, s8, p2, s8, s8, avx2)
    with pytest.raises(RuntimeError, match="x must be a channels-last-3d fp32 CPU tensor"):
        ext.multiplexer_cl(x.contiguous(), p1, 4, s8, s8, p2, s4, s4, avx2)
