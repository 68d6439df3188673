"""The fiber conv: a grouped (KT, 3, 3) conv with same padding, KT in (1, 3), MF-Net's fiber convs,
as direct C++ (``csrc/fiber_cl*.cpp`` channels last, ``csrc/fiber_ncdhw.cpp`` NCDHW).

- channels last (MF-Net's default), any stride: forward and the weight gradient on the kernel,
  the input gradient at stride 1 and where only time is strided; BatchNorm + ReLU before the
  conv folded into its packing of the input, and a residual added as each output row is
  written, where the caller asks;
- NCDHW, stride 1: forward and both gradients (fp32 on AVX2, fp32 and fp64 on the scalar path,
  which ``gradcheck`` uses).
"""

import torch
import torch.nn.functional as F

from models.kernels import build, paths
from models.kernels.support import batch_affine, channels_last

PROFILED_AS = "suite::fiber_conv"  # the kernel's forward, as torch.profiler's tables name it


def pack(weight: torch.Tensor, groups: int, turned: bool = False) -> torch.Tensor:
    """``weight`` in the channels-last forward's layout for this process's path; ``turned``:
    the packing of ``flipped(weight, groups)``, the input gradient's conv, made from ``weight``
    in one pass."""
    return build.extension().pack_cl(weight, groups, paths.table(), turned)


def forward_cl(x: torch.Tensor, packed: torch.Tensor, cout_g: int, stride, scale=None, shift=None,
               residual=None) -> torch.Tensor:
    """The channels-last forward on this process's path (``packed`` by ``pack``):
    ``conv(relu(x * scale + shift))`` where scale and shift are given, else ``conv(x)``, plus
    ``residual`` (the output's shape, channels last) where given."""
    return build.extension().forward_cl(x, packed, cout_g, list(stride), paths.table(), scale, shift, residual)


def flipped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight of the convolution that maps grad y to grad x (stride 1, same padding):
    per group, input and output channels swapped and every kernel turned by 180 degrees."""
    cout, cin_g, kt = weight.shape[:3]
    cout_g = cout // groups
    return (weight.reshape(groups, cout_g, cin_g, kt, 3, 3).transpose(1, 2).flip(3, 4, 5)
            .reshape(groups * cin_g, cout_g, kt, 3, 3).contiguous())


def reference(x: torch.Tensor, weight: torch.Tensor, groups: int, stride=(1, 1, 1)) -> torch.Tensor:
    """PyTorch's own conv for the same arguments, what the kernel is tested against."""
    return F.conv3d(x, weight, stride=stride, padding=(weight.shape[2] // 2, 1, 1), groups=groups)


def _phase_weight(weight: torch.Tensor, groups: int, st: int, phase: int):
    """The stride-1 weight that gives the input gradient's frames ``phase``, ``phase + st``, ...
    of a conv strided ``st`` in time (and 1 in space) from the output gradient, or None where no
    tap reaches those frames. Input frame ``st * m + phase`` gets output frame ``m + d`` through
    tap ``kt = phase + pad - st * d``; in the stride-1 conv that is tap ``d + 1`` (it reads frame
    ``m + tap - 1``), so a (3, 3, 3) weight, or (1, 3, 3) where every ``d`` is 0. Per group, input
    and output channels are swapped and the 3x3 plane turned by 180 degrees, as in ``flipped``."""
    cout, cin_g, kt_n = weight.shape[:3]
    pad = kt_n // 2
    taps = {(phase + pad - kt) // st: kt for kt in range(kt_n) if (phase + pad - kt) % st == 0}
    if not taps:
        return None
    turned = (weight.reshape(groups, cout // groups, cin_g, kt_n, 3, 3).transpose(1, 2)
              .flip(4, 5).reshape(groups * cin_g, cout // groups, kt_n, 3, 3))
    if set(taps) == {0}:
        return turned[:, :, taps[0]:taps[0] + 1].contiguous()
    assert set(taps) <= {-1, 0, 1}, taps  # KT <= 3 and st >= 2
    out = turned.new_zeros(groups * cin_g, cout // groups, 3, 3, 3)
    for d, kt in taps.items():
        out[:, :, d + 1] = turned[:, :, kt]
    return out


def _time_strided_grad_input(grad, x, weight, stride, groups):
    """The input gradient of a conv strided in time only (MF-Net's first fiber conv, (2, 1, 1))
    on the kernel: per phase of the input frames, a stride-1 conv of the output gradient
    (``_phase_weight``), written into every ``st``-th frame. PyTorch's own, a transposed conv
    with 16 groups of one channel, took 10x the forward's time."""
    st = stride[0]
    grad_x = torch.empty_like(x, memory_format=torch.channels_last_3d)
    for phase in range(min(st, x.shape[2])):
        w = _phase_weight(weight, groups, st, phase)
        if w is None:  # frames no tap reaches (a (1, 3, 3) conv strided in time)
            grad_x[:, :, phase::st] = 0
            continue
        y = forward_cl(grad, pack(w, groups), weight.shape[1], (1, 1, 1))
        grad_x[:, :, phase::st] = y[:, :, :len(range(phase, x.shape[2], st))]
    return grad_x


def _stock_grad_input(grad, x, weight, stride, groups):
    """PyTorch's own input gradient of the same conv: a strided conv's is a transposed conv,
    which the kernel does not cover."""
    pad = [weight.shape[2] // 2, 1, 1]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), pad, [1, 1, 1], False, [0, 0, 0], groups,
        [True, False, False])[0]


def input_gradient_cl(grad, x, weight, groups, stride):
    """The channels-last conv's input gradient: the kernel with ``flipped`` weights at stride 1,
    by phases where only time is strided, PyTorch's own where space is."""
    if tuple(stride) == (1, 1, 1):
        return forward_cl(grad, pack(weight, groups, turned=True), weight.shape[1], (1, 1, 1))
    if tuple(stride[1:]) == (1, 1):
        return _time_strided_grad_input(grad, x, weight, stride, groups)
    return _stock_grad_input(grad, x, weight, stride, groups)


class FiberConvFunction(torch.autograd.Function):
    """The conv on the kernel, in either layout, with its two gradients:

    - NCDHW (stride 1): forward, the input's gradient (the forward with ``flipped`` weights)
      and the weight's, all on the kernel;
    - channels last: forward and the weight's gradient on the kernel at any stride; the
      input's gradient as ``input_gradient_cl``. A residual, where given, is added in the
      output as it is written, and its gradient is the output's, passed on as it is."""

    @staticmethod
    def forward(ctx, x, weight, groups, stride, packed=None, residual=None):
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.stride = groups, stride
        with torch.profiler.record_function(PROFILED_AS):
            if channels_last(x, stride):
                packed = pack(weight, groups) if packed is None else packed
                return forward_cl(x, packed, weight.shape[0] // groups, stride, residual=residual)
            # a channels-last model's weights are channels last too
            y = build.extension().forward_ncdhw(x, weight.contiguous(), groups, paths.force_scalar())
            return y if residual is None else y.add_(residual)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        groups, stride = ctx.groups, ctx.stride
        need_x, need_w = ctx.needs_input_grad[:2]
        ext = build.extension()
        if channels_last(x, stride):
            grad = grad.contiguous(memory_format=torch.channels_last_3d)
            grad_x = input_gradient_cl(grad, x, weight, groups, stride) if need_x else None
            grad_w = (ext.grad_weight_cl(x, grad, groups, weight.shape[2], list(stride), paths.table())
                      if need_w else None)
        else:
            scalar, grad = paths.force_scalar(), grad.contiguous()
            grad_x = ext.forward_ncdhw(grad, flipped(weight, groups), groups, scalar) if need_x else None
            grad_w = ext.grad_weight_ncdhw(x, grad, groups, weight.shape[2], scalar) if need_w else None
        # the residual, where one was given (apply may be called without it)
        return grad_x, grad_w, None, None, None, grad if ctx.needs_input_grad[5:] == (True,) else None


class BNReLUFiberFunction(torch.autograd.Function):
    """``conv(relu(x * scale + shift)) (+ residual)`` in training, channels last: the batch's
    BatchNorm + ReLU folded into the kernel's packing of its input in the forward and again in
    the weight gradient's, so the activated input is never written out (one pass over x fewer
    and one activation-sized tensor fewer kept). Only where the weight gradient packs its input
    anyway (``folds_in_training``): its narrow form reads x in place, where an activation per
    value would cost more than the pass saved."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, mean, invstd, weight, groups, stride, residual):
        scale, shift = batch_affine(bn_weight, bn_bias, mean, invstd)
        ctx.save_for_backward(x, mean, invstd, scale, shift, weight)
        ctx.groups, ctx.stride = groups, stride
        with torch.profiler.record_function(PROFILED_AS):
            return forward_cl(x, pack(weight, groups), weight.shape[0] // groups, stride, scale, shift, residual)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, invstd, scale, shift, weight = ctx.saved_tensors
        groups, stride = ctx.groups, ctx.stride
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        ext = build.extension()
        grad_x = grad_bn_weight = grad_bn_bias = grad_w = None
        if ctx.needs_input_grad[5]:
            grad_w = ext.grad_weight_cl(x, grad, groups, weight.shape[2], list(stride), paths.table(), scale, shift)
        if any(ctx.needs_input_grad[:3]):
            grad_a = input_gradient_cl(grad, x, weight, groups, stride)
            grad_x, grad_bn_weight, grad_bn_bias = ext.bn_relu_backward(grad_a, x, mean, invstd, scale, shift)
        grad_residual = grad if ctx.needs_input_grad[8] else None
        return grad_x, grad_bn_weight, grad_bn_bias, None, None, grad_w, None, None, grad_residual


def folds_in_training(cout_g: int, stride) -> bool:
    """Whether training's BatchNorm + ReLU folds into a fiber conv of ``cout_g`` output channels
    a group (``BNReLUFiberFunction``): where its weight gradient packs its input, not the narrow
    form that reads it in place."""
    return not build.extension().wgrad_in_place(cout_g, list(stride), paths.table())


def fiber_conv3d(x: torch.Tensor, weight: torch.Tensor, groups: int, stride=(1, 1, 1)) -> torch.Tensor:
    """``F.conv3d(x, weight, stride, padding=(KT // 2, 1, 1), groups=groups)`` on the kernel:
    channels-last inputs (any stride) stay channels last, others run NCDHW (stride 1)."""
    stride = tuple(stride)
    if not channels_last(x, stride):
        x = x.contiguous(memory_format=torch.contiguous_format if stride == (1, 1, 1)
                         else torch.channels_last_3d)
    return FiberConvFunction.apply(x, weight.contiguous(), groups, stride)
