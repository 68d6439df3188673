"""The library's fused blocks: where several modules of a plain model run as one op.

- ``PreActConv3d``: a pre-activation conv, ``nn.Sequential(BatchNorm3d, ReLU, conv)`` with a
  fiber or pointwise conv (MF-Net's every conv inside a unit). In inference its BatchNorm + ReLU
  is folded into the conv's reading of its input; in training the batch's statistics are a pass
  of their own and the activation goes into the conv's reading of its input (where the conv's
  weight gradient packs it anyway). A residual given to it is added as the conv writes its output.
- ``FusedMultiFiberUnit``: a multi-fiber unit (Chen et al., ECCV 2018, Fig. 3b; the authors'
  layout: ``conv_i1``, ``conv_i2`` the multiplexer, ``conv_m1``, ``conv_m2`` the fiber convs,
  ``conv_w1`` a stage's first unit's projection shortcut, each a pre-activation conv). Its
  residual adds go into the convs' outputs; in inference the multiplexer, two pointwise convs
  and the add, is one op; in training x's residual uses hand their gradients to the multiplexer's
  first BatchNorm, which adds them as it writes x's.

In bf16 autocast inference a unit runs as ``ops/bf16.py`` says: oneDNN's bf16 convs with the
BatchNorm + ReLU after them folded in and residual adds as their epilogue, the unit input's
pre-activations as one pass of the library's bf16 rows. Where the CPU has no native bf16 the unit
runs on the fp32 kernels instead, its input and output cast (said once).

Each falls back to running its modules as modules where a call does not allow the fused op:
gradients or not, layouts, dtypes, tracing, and any forward hook (which the fused op would not
call).
"""

import warnings

import torch
from torch import nn

from models.kernels import build, paths
from models.kernels.modules import BatchNormReLU3d, FiberConv3d, PointwiseConv3d
from models.kernels.ops import bf16, bn_relu, pointwise
from models.kernels.support import cl, eval_affine, hooked, residual_fits


class PreActConv3d(nn.Sequential):
    """``conv(relu(bn(x))) (+ residual)``: its three children, a ``BatchNormReLU3d``, a
    ``FusedReLU`` and a ``FiberConv3d`` or ``PointwiseConv3d``, as one op where a call allows.
    The children keep their names, so the checkpoint keys stay."""

    @property
    def parts(self) -> tuple[BatchNormReLU3d, nn.Module, FiberConv3d | PointwiseConv3d]:
        bn, relu, conv = self._modules.values()
        return bn, relu, conv

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        bn, _, conv = self.parts
        if self._fuses(x, residual):
            if not torch.is_grad_enabled() and not bn.batch_stats():  # inference
                return conv.eval_folded(x, eval_affine(bn), residual)
            if torch.is_grad_enabled() and bn.batch_stats() and bn.applies(x) and conv.folds_in_training():
                return conv.train_folded(x, self._statistics(x), residual)
        return self._as_modules(x, residual)

    def forward_shared(self, x: torch.Tensor, shared: int) -> tuple[torch.Tensor, ...]:
        """``(self(x), x, ..., x)``, ``x`` handed back ``shared`` times for its other uses (a
        unit's residual adds). In training on the kernels their gradients are added to ``x``'s as
        the BatchNorm's backward writes it, instead of in a pass over ``x`` each (bf16 training
        too, its conv PyTorch's under autocast)."""
        bn, relu, conv = self.parts
        if torch.is_grad_enabled() and not hooked(self, bn, relu, conv) and bn.bf16_training(x):
            a, *uses = bn.forward_shared(x, shared)
            return (conv(relu(a)), *uses)
        if not (torch.is_grad_enabled() and self._fuses(x)):
            return (self(x), *[x] * shared)
        if bn.batch_stats() and bn.applies(x) and conv.folds_in_training(shared):
            return conv.train_folded(x, self._statistics(x), shared=shared)
        a, *uses = bn.forward_shared(x, shared)
        return (conv(relu(a)), *uses)

    def _fuses(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
        bn, relu, conv = self.parts
        return (not hooked(self, bn, relu, conv) and conv.folds(x)
                and (residual is None or residual_fits(conv, x, residual)))

    def _statistics(self, x: torch.Tensor):
        with torch.profiler.record_function(bn_relu.PROFILED_AS):
            return self.parts[0].batch_statistics(x)

    def _as_modules(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        bn, relu, conv = self.parts
        a = relu(bn(x))
        if residual is None:
            return conv(a)
        if hooked(conv):  # its hooks see the conv's own output
            return conv(a).add_(residual)
        return conv(a, residual)


class ConvBNReLU3d(nn.Sequential):
    """``relu(bn(conv(x)))``: a plain ``Conv3d`` (no bias), a ``BatchNormReLU3d`` and its
    ``FusedReLU`` (MF-Net's stem). In bf16 autocast inference, where oneDNN runs bf16 convs and
    the CPU has the library's bf16 path, one oneDNN conv with the BatchNorm folded into its
    weight and the ReLU its epilogue (``bf16.conv``), where autocast runs the conv and then the
    BatchNorm + ReLU as a pass of its own; else its modules. A clip that is not finite runs as
    the modules, so NaN reaches what PyTorch's ReLU sends it to (oneDNN's ReLU epilogue zeroes
    it). The children keep their names, so the checkpoint keys stay."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = self._modules.values()
        if self._folds_bf16(x, conv, bn, relu):
            x = cl(x.to(torch.bfloat16))
            if bool(x.sum().isfinite()):  # a sum is NaN or infinite where any value is
                return bf16.conv(x, conv, after=bn)
        return relu(bn(conv(x)))

    def _folds_bf16(self, x: torch.Tensor, conv: nn.Conv3d, bn: BatchNormReLU3d, relu: nn.Module) -> bool:
        return (x.device.type == "cpu" and x.dim() == 5 and x.dtype in (torch.bfloat16, torch.float32)
                and x.numel() > 0 and x.shape[1] == conv.in_channels and not torch.is_grad_enabled()
                and conv.bias is None and conv.padding_mode == "zeros" and conv.dilation == (1, 1, 1)
                and isinstance(conv.padding, tuple) and not bn.batch_stats()
                and bf16.autocast() and paths.bf16_path() and paths.channels_last_path() and bf16.supported()
                and not hooked(self, conv, bn, relu) and bf16.finite_conv(conv, bn))


def multiplexes(first: PreActConv3d, second: PreActConv3d, x: torch.Tensor) -> bool:
    """Whether the multiplexer ``x + second(first(x))`` (x's channels to a few and back) runs as
    one op: inference, each conv pointwise at stride 1 and folding on its own, no hook."""
    if torch.is_grad_enabled() or hooked(first, second):
        return False
    (bn1, _, conv1), (bn2, _, conv2) = first.parts, second.parts
    return (isinstance(conv1, PointwiseConv3d) and isinstance(conv2, PointwiseConv3d)
            and conv1.stride == conv2.stride == (1, 1, 1) and not bn1.batch_stats() and not bn2.batch_stats()
            and conv2.in_channels == conv1.out_channels and conv2.out_channels == conv1.in_channels
            and first._fuses(x) and not hooked(*second.parts) and conv2.kernel_conv())


class FusedMultiFiberUnit(nn.Module):
    """A multi-fiber unit on the kernels (see the module docstring): the same children and
    attributes as the unit it was swapped from, the same outputs and gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16_autocast(x):
            if not paths.bf16_path():
                return self._forward_fp32_inside(x)
            if not torch.is_grad_enabled() and self.folds_bf16():
                return self._forward_bf16(x)
            if torch.is_grad_enabled():  # bf16 training: BatchNorm + ReLU on the library's rows
                return self._forward_fused(cl(x.to(torch.bfloat16)))
        return self._forward_fused(x)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The kernels' fused ops where a call allows, the modules otherwise."""
        shortcut = x
        if not hasattr(self, "conv_i1"):  # no multiplexer
            h = x
        elif multiplexes(self.conv_i1, self.conv_i2, x):
            first, second = self.conv_i1.parts, self.conv_i2.parts
            h = pointwise.multiplexed(x, first[2].packed(), first[2].out_channels, eval_affine(first[0]),
                                      second[2].packed(), eval_affine(second[0]))
        else:
            # x's residual uses come back from the multiplexer's first BatchNorm, which in
            # training adds their gradients to x's as it writes it
            mixed, *uses = self.conv_i1.forward_shared(x, 1 if self.projects else 2)
            h = self.conv_i2(mixed, residual=uses[0])
            shortcut = uses[-1]
        if self.projects:
            shortcut = self.conv_w1(x)
        return self.conv_m2(self.conv_m1(h), residual=shortcut)

    @property
    def projects(self) -> bool:
        """A stage's first unit: its shortcut is a projection (``conv_w1``)."""
        return hasattr(self, "conv_w1")

    def bf16_autocast(self, x: torch.Tensor) -> bool:
        """Whether this call is under CPU bf16 autocast with the library built, on a clip, not
        traced and not hooked: then the unit runs on the kernels' bf16 path or its fp32 kernels,
        never as modules under autocast."""
        if not (x.device.type == "cpu" and x.dim() == 5 and x.dtype in (torch.bfloat16, torch.float32)
                and bf16.autocast() and paths.channels_last_path()):
            return False
        convs = self._preact_convs()
        return not hooked(*convs, *[part for c in convs for part in c.parts])

    def folds_bf16(self) -> bool:
        """Whether the bf16 inference path can fold the unit: every BatchNorm in eval mode, every
        conv without bias and finite with its BatchNorm, oneDNN with bf16 convs."""
        return bf16.supported() and all(not c.parts[0].batch_stats() and c.parts[2].bias is None
                                        and bf16.finite(c) for c in self._preact_convs())

    def _preact_convs(self) -> list[PreActConv3d]:
        names = ("conv_i1", "conv_i2", "conv_m1", "conv_m2", "conv_w1")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def _forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        x = cl(x.to(torch.bfloat16))
        # the BatchNorms that read x raw, in one pass over it: the multiplexer's first (else the
        # fiber conv's) and the projection's
        first = self.conv_i1 if hasattr(self, "conv_i1") else self.conv_m1
        readers = [first, self.conv_w1] if self.projects else [first]
        acts, finite = bf16.affine_relu(x, *(eval_affine(r.parts[0]) for r in readers))
        if not finite:  # NaN or Inf: PyTorch's ops under autocast send it where they do
            return self._forward_fused(x)
        a, before = acts[0], None
        if hasattr(self, "conv_i1"):
            (_, _, conv_i1), (bn_i2, _, conv_i2) = self.conv_i1.parts, self.conv_i2.parts
            mixed = bf16.conv(a, conv_i1, after=bn_i2)
            bn_m1 = self.conv_m1.parts[0]
            if bf16.multiplexer_relu(bn_m1) is not None:  # the fiber conv's BatchNorm + ReLU in its epilogue
                a, before = bf16.conv(mixed, conv_i2, add=x, add_relu=bn_m1), bn_m1
            else:
                (a,), finite = bf16.affine_relu(bf16.conv(mixed, conv_i2, add=x), eval_affine(bn_m1))
                if not finite:  # the multiplexer overflowed
                    return self._forward_fused(x)
        shortcut = bf16.conv(acts[-1], self.conv_w1.parts[2]) if self.projects else x
        (_, _, conv_m1), (bn_m2, _, conv_m2) = self.conv_m1.parts, self.conv_m2.parts
        return bf16.conv(bf16.conv(a, conv_m1, after=bn_m2, before=before), conv_m2, add=shortcut)

    def _forward_fp32_inside(self, x: torch.Tensor) -> torch.Tensor:
        """Where the CPU has no native bf16: the unit on the fp32 kernels, its input and output
        cast, so the bf16 network around it stays bf16 (autocast's other ops run as they would);
        in training the gradients reach the fp32 weights as autocast's do."""
        if not build._loaded.get("told bf16 fallback"):
            build._loaded["told bf16 fallback"] = True
            warnings.warn(f"no native bf16 here (no AVX512-BF16, or {paths.SWITCH}={paths.BF16_FALLBACK}): bf16 "
                          "autocast runs multi-fiber units on the suite's fp32 kernels", stacklevel=3)
        with torch.autocast("cpu", enabled=False):
            return self.forward(cl(x.float())).to(torch.bfloat16)
