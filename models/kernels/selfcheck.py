"""A path's build checked against another's before it is used: the AVX-512 build runs on CPUs
the suite's CI lacks, so a build this machine's tests never ran cannot give silently wrong
numbers. Imports nothing of the kernel library: it is given the loaded library and the two
paths' tables (``paths.py`` calls it once per process)."""

import warnings

import torch

# (cin_g, cout_g, KT, stride): each register-block form of the channels-last forward, with rows
# and channel counts that leave tails
FIBER_FORMS = [(6, 6, 3, (1, 1, 1)), (12, 12, 1, (1, 1, 1)), (3, 2, 3, (1, 1, 1)),
               (1, 6, 3, (2, 1, 1)), (6, 12, 3, (1, 2, 2)), (24, 24, 3, (1, 1, 1)),
               (40, 48, 1, (1, 2, 2)), (5, 17, 3, (2, 1, 1))]


def agrees(module, candidate, reference) -> bool:
    """Whether ``candidate``'s channels-last forward and weight gradient equal ``reference``'s
    (within fp32 rounding) on every form in ``FIBER_FORMS``, BatchNorm + ReLU folding included,
    and its pointwise convs too. One that disagrees is not used, with one line saying so."""
    gen = torch.Generator().manual_seed(0)
    for cin_g, cout_g, kt, stride in FIBER_FORMS:
        if not _fiber_agrees(module, candidate, reference, gen, cin_g, cout_g, kt, stride):
            warnings.warn(f"the fiber kernel's {candidate.name} path disagrees with its {reference.name} "
                          f"path on this CPU (a {cin_g}->{cout_g} per group conv); using {reference.name}",
                          stacklevel=4)
            return False
    outs = [_pointwise_outputs(module, isa, torch.Generator().manual_seed(1))
            for isa in (candidate, reference)]
    if not all(_close(a, b) for a, b in zip(*outs)):
        warnings.warn(f"the pointwise kernel's {candidate.name} path disagrees with its {reference.name} "
                      f"path on this CPU; using {reference.name}", stacklevel=4)
        return False
    return True


def bf16_rows_agree(module) -> bool:
    """Whether the AVX512-BF16 build of bf16 inference's rows gives the emulated build's bits,
    and its finiteness flag, on channel counts from 1 to six vectors with tails, on signs, zeros,
    NaN, infinities and exact rounding ties (1 and 2 times 1 + 2^-8). One that differs is not
    used, with one line saying so."""
    gen = torch.Generator().manual_seed(2)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    for channels in (1, 15, 16, 17, 40, 96):
        x = (torch.randn(2, channels, 3, 4, 5, generator=gen) * 4).to(torch.bfloat16)
        x[:, 0] = torch.tensor([1.0, 2.0, -1.0]).repeat(20)[:60].view(3, 4, 5)  # ties at channel 0
        if channels > 1:
            x[0, 1, 0, 0, :4] = specials
        x = _cl(x)
        scales = [torch.randn(channels, generator=gen) for _ in range(2)]
        shifts = [torch.randn(channels, generator=gen) for _ in range(2)]
        scales[0][0], shifts[0][0] = 1 + 2 ** -8, 0.0
        native, native_finite = module.affine_relu_bf16(x, scales, shifts, True)
        emulated, emulated_finite = module.affine_relu_bf16(x, scales, shifts, False)
        same = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) or _same_nan(a, b)
                   for a, b in zip(native, emulated))
        if native_finite != emulated_finite or not same:
            warnings.warn("bf16 inference's AVX512-BF16 rows disagree with the emulated build on this CPU; "
                          "bf16 autocast runs the fp32 kernels", stacklevel=4)
            return False
    return True


def _same_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other is NaN (payload bits aside)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def _fiber_agrees(module, candidate, reference, gen, cin_g, cout_g, kt, stride) -> bool:
    groups = 2
    x = _cl(torch.randn(2, groups * cin_g, 5, 6, 19, generator=gen))
    weight = torch.randn(groups * cout_g, cin_g, kt, 3, 3, generator=gen)
    scale, shift = torch.rand(groups * cin_g, generator=gen), torch.randn(groups * cin_g, generator=gen)
    outs = [module.forward_cl(x, module.pack_cl(weight, groups, isa), cout_g, list(stride), isa, scale, shift)
            for isa in (candidate, reference)]
    grads = [module.grad_weight_cl(x, outs[1], groups, kt, list(stride), isa) for isa in (candidate, reference)]
    return _close(*outs) and _close(*grads)


def _pointwise_outputs(module, isa, gen) -> list[torch.Tensor]:
    """A strided conv with a residual and channels off the vector width, a multiplexer, the
    weight gradient, and training's backward with BatchNorm + ReLU folded in both ways round
    (40 -> 30: the conv's input gradient the wider; 30 -> 40), with and without a gradient to
    add, and strided."""
    x = _cl(torch.randn(2, 40, 3, 7, 9, generator=gen))
    w, w1, w2 = (torch.randn(co, k, 1, 1, 1, generator=gen) for co, k in ((50, 40), (30, 40), (40, 30)))
    s40, s30 = (torch.rand(n, generator=gen) for n in (40, 30))
    residual = _cl(torch.randn(2, 50, 2, 4, 5, generator=gen))
    y30 = _cl(torch.randn(2, 30, 3, 7, 9, generator=gen))
    x30 = _cl(torch.randn(2, 30, 3, 7, 9, generator=gen))

    def pack(weight, transposed=False):
        return module.pack_pointwise(weight, isa, transposed)

    def backward(grad, inp, weight, s, plus, stride):
        return module.bn_pointwise_backward(grad, inp, pack(weight, transposed=True), s - 0.5, s + 0.5, s,
                                            s - 0.5, plus, stride, isa, True)

    return [module.pointwise_cl(x, pack(w), 50, [2, 2, 2], s40, s40 - 0.5, residual, isa=isa),
            module.multiplexer_cl(x, pack(w1), 30, s40, s40 - 0.5, pack(w2), s30, s30 - 0.5, isa),
            module.grad_weight_pointwise(x, residual, [2, 2, 2], isa),
            module.grad_weight_pointwise(residual, _cl(x[:, :, ::2, ::2, ::2]), [1, 1, 1], isa),
            *backward(y30, x, w1, s40, [x], [1, 1, 1]),
            *backward(x, x30, w2, s30, [], [1, 1, 1]),
            *backward(residual, x, w, s40, [], [2, 2, 2])]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
