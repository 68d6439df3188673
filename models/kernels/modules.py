"""The library's leaf modules: each a subclass of the PyTorch module it stands in for, with no
state of its own (the same parameters, buffers and checkpoint keys), running on the kernels
where a call allows and as that module otherwise. ``rewrite.py`` swaps them in and out.

- ``FiberConv3d``: a grouped (1 or 3, 3, 3) conv with same padding (MF-Net's fiber convs);
- ``PointwiseConv3d``: a 1x1x1 conv after a BatchNorm + ReLU, on the kernel in training;
- ``BatchNormReLU3d`` and ``FusedReLU``: a BatchNorm and the ReLU after it as one op;
- ``OneDNNPointwiseConv3d``: a 1x1x1 conv kept on oneDNN at batch 1 (PyTorch's own kernels).

Where a module's forward falls back, it runs the class it was swapped from (``STOCK_CLASS``),
so a conv that was pinned to oneDNN stays pinned.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from models.kernels import build, paths
from models.kernels.ops import bf16, bn_relu, fiber, pointwise
from models.kernels.support import channels_last, eval_affine, hooked, kept, residual_fits, traced

STOCK_CLASS = "_suite_stock_class"  # the class a module had before it was swapped (no checkpoint key)
PACKED = "_suite_packed"  # a conv's packed weight, kept while the weight and the path are unchanged
FINITE = "_suite_finite"  # whether a fiber conv's weight is finite, kept while it is unchanged


def stock_class(module: nn.Module, default: type) -> type:
    return module.__dict__.get(STOCK_CLASS, default)


class OneDNNPointwiseConv3d(nn.Conv3d):
    """A 1x1x1 ``Conv3d`` that runs on oneDNN on the CPU at batch 1; the same weights and math.

    PyTorch's backend choice (``use_mkldnn`` in ATen's ConvUtils.h) sends a batch-1 conv with
    N*C*T*H <= 20480 to ``slow_conv3d`` (im2col and GEMM on a contiguous copy of a channels-last
    input). In MF-Net at 16x224x224 that is most multiplexer convs and the strided shortcut
    projections, 14 per clip; measured at batch 1, they were ~10% of MF-Net's latency
    (234 -> 207-212 ms with this class). Everywhere else it is a plain ``Conv3d``: larger
    batches (PyTorch sends those to oneDNN already), other devices and dtypes, autocast, and
    under ``torch.jit.trace`` (fvcore) or ``torch.compile``, which should see the standard op.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pinned_to_onednn(x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super().forward(x)

    def _pinned_to_onednn(self, x: torch.Tensor) -> bool:
        # compile and trace first: dynamo folds this to a constant, where the checks below would
        # break the graph at every 1x1x1 conv
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False
        return (x.device.type == "cpu" and x.shape[0] == 1
                and x.dtype == self.weight.dtype == torch.float32
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not torch.is_autocast_enabled("cpu"))


def _cl_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A call the channels-last kernels can take: CPU fp32, outside autocast and tracing, and a
    channels-last path chosen in this process."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() == 5
            and not torch.is_autocast_enabled("cpu") and not traced()
            and build.extension() is not None and paths.channels_last_path())


class FiberConv3d(nn.Conv3d):
    """A grouped ``Conv3d`` on the fiber kernel where it applies: CPU, a (1 or 3, 3, 3) kernel
    with same padding, no bias, outside autocast, ``torch.compile`` and tracing; a channels-last
    fp32 input on a channels-last path at any stride, or a contiguous fp32/fp64 input at stride 1.
    In inference the packed weights are kept until the weight changes."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``conv(x) (+ residual)``; on the kernel (channels last) the residual is added as each
        output row is written, and its gradient is the output's, passed on as it is."""
        if self.runs_on_kernel(x):
            fits = residual is not None and channels_last(x, self.stride) and residual_fits(self, x, residual)
            y = fiber.FiberConvFunction.apply(x, self.weight, self.groups, self.stride, self._packed(x),
                                              residual if fits else None)
            return y if residual is None or fits else y.add_(residual)
        y = stock_class(self, nn.Conv3d).forward(self, x)
        return y if residual is None else y.add_(residual)

    def runs_on_kernel(self, x: torch.Tensor) -> bool:
        if traced():
            return False
        kt = self.kernel_size[0]
        common = (x.device.type == "cpu" and x.dtype == self.weight.dtype and self.bias is None
                  and self.kernel_size[1:] == (3, 3) and kt in (1, 3)
                  and self.padding == (kt // 2, 1, 1) and self.dilation == (1, 1, 1)
                  and self.padding_mode == "zeros" and not torch.is_autocast_enabled("cpu"))
        if not common or build.extension() is None or not self._finite_weight():
            return False
        if channels_last(x, self.stride):
            return x.dtype == torch.float32 and paths.channels_last_path()
        return x.is_contiguous() and x.dtype in (torch.float32, torch.float64) and self.stride == (1, 1, 1)

    def _finite_weight(self) -> bool:
        """Whether the weight is finite. PyTorch's conv multiplies its zero padding by the weight
        (0 * NaN and 0 * Inf are NaN) where the kernel skips padded taps, so a non-finite weight
        runs as PyTorch's conv: NaN reaches the outputs it reaches there, the border's included."""
        weight = self.weight  # checked once per change (an optimizer step bumps its version)
        # the sum is NaN or infinite where any value is (or where finite values overflow: then
        # PyTorch's conv runs, the same numbers); one pass, a quarter of isfinite().all()'s time
        return kept(self, FINITE, (weight.data_ptr(), weight._version),
                    lambda: bool(weight.detach().sum().isfinite()))

    def folds(self, x: torch.Tensor) -> bool:
        """Whether a BatchNorm + ReLU before this conv can be folded into the kernel's packing of
        ``x``: a channels-last input on the kernel."""
        return self.runs_on_kernel(x) and channels_last(x, self.stride)

    def _packed(self, x: torch.Tensor):
        """The channels-last weight packing, kept while the weight is unchanged and no gradient
        is wanted (a training step packs afresh: its weight changes every step)."""
        if not channels_last(x, self.stride) or (torch.is_grad_enabled() and self.weight.requires_grad):
            return None
        return kept(self, PACKED, (self.weight.data_ptr(), self.weight._version, paths.path()),
                    lambda: fiber.pack(self.weight.detach(), self.groups))

    def eval_folded(self, x: torch.Tensor, affine, residual=None) -> torch.Tensor:
        """``conv(relu(x * scale + shift)) (+ residual)``, no gradient: BatchNorm + ReLU applied
        in the kernel's packing of its input, the residual as each output row is written."""
        with torch.profiler.record_function(fiber.PROFILED_AS):
            return fiber.forward_cl(x, self._packed(x), self.out_channels // self.groups, self.stride,
                                    *affine, residual)

    def folds_in_training(self, shared: int = 0) -> bool:
        """Whether training's BatchNorm + ReLU folds in (``train_folded``): where the weight
        gradient packs its input anyway, and no other use of x shares its gradient."""
        return not shared and fiber.folds_in_training(self.out_channels // self.groups, self.stride)

    def train_folded(self, x: torch.Tensor, statistics, residual=None, shared: int = 0) -> torch.Tensor:
        """``conv(relu(bn(x))) (+ residual)`` with the batch's BatchNorm ``statistics``
        (``BatchNormReLU3d.batch_statistics``), as ``BNReLUFiberFunction``."""
        return fiber.BNReLUFiberFunction.apply(x, *statistics, self.weight, self.groups, self.stride, residual)


class PointwiseConv3d(OneDNNPointwiseConv3d):
    """A 1x1x1 conv (no bias, no groups) after a BatchNorm + ReLU (``PreActConv3d``'s): its
    BatchNorm + ReLU folded in where the pre-activation conv asks (``eval_folded``,
    ``train_folded``), and on its own in training on the kernel (``PointwiseFunction``); in
    inference on its own, the class it was swapped from (a plain or a oneDNN-pinned conv, whose
    methods it has)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.runs_on_kernel(x):
            fits = residual is not None and residual_fits(self, x, residual)
            y = pointwise.PointwiseFunction.apply(x, self.weight, tuple(self.stride), residual if fits else None)
            return y if residual is None or fits else y.add_(residual)
        y = stock_class(self, nn.Conv3d).forward(self, x)
        return y if residual is None else y.add_(residual)

    def kernel_conv(self) -> bool:
        """Whether the kernel runs this conv at all: 1x1x1, no padding, groups or bias, fp32."""
        return (self.kernel_size == (1, 1, 1) and self.padding == (0, 0, 0) and self.groups == 1
                and self.bias is None and self.weight.dtype == torch.float32)

    def runs_on_kernel(self, x: torch.Tensor) -> bool:
        return (self.kernel_conv() and _cl_input(x, self.weight) and x.shape[1] == self.in_channels
                and x.numel() > 0 and x.is_contiguous(memory_format=torch.channels_last_3d))

    def folds(self, x: torch.Tensor) -> bool:
        return self.runs_on_kernel(x)

    def packed(self) -> torch.Tensor:
        """The weight packed for this process's path, kept until the weight (or the path) changes."""
        weight = self.weight
        return kept(self, PACKED, (weight.data_ptr(), weight._version, paths.path()),
                    lambda: pointwise.pack(weight))

    def eval_folded(self, x: torch.Tensor, affine, residual=None) -> torch.Tensor:
        return pointwise.conv_folded(x, self.packed(), self.out_channels, self.stride, *affine, residual)

    def folds_in_training(self, shared: int = 0) -> bool:
        return True

    def train_folded(self, x: torch.Tensor, statistics, residual=None, shared: int = 0):
        return pointwise.BNReLUPointwiseFunction.apply(x, *statistics, self.weight, tuple(self.stride),
                                                       residual, shared)


class BatchNormReLU3d(nn.BatchNorm3d):
    """``relu(BatchNorm3d(x))`` in one pass on the kernel where it applies (``applies``), else
    the two as PyTorch runs them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.applies(x):
            return F.relu(super().forward(x))
        with torch.profiler.record_function(bn_relu.PROFILED_AS):
            return self._fused(x)

    def forward_shared(self, x: torch.Tensor, shared: int) -> tuple[torch.Tensor, ...]:
        """``(self(x), x, ..., x)`` with ``x`` ``shared`` times, for ``x``'s other uses. On the
        kernel in training their gradients join ``x``'s in the backward's one pass; elsewhere
        they are ``x`` itself."""
        if not (shared and self.applies(x) and torch.is_grad_enabled()):
            return (self(x), *[x] * shared)
        with torch.profiler.record_function(bn_relu.PROFILED_AS):
            return self._fused(x, shared)

    def batch_stats(self) -> bool:
        """Whether a forward normalises with the batch's statistics (training, or none kept)."""
        return self.training or self.running_mean is None

    def _fused(self, x: torch.Tensor, shared: int = 0):
        if not self.batch_stats():  # eval mode, no gradient: the running statistics' affine
            y = bn_relu.affine_relu(x, *eval_affine(self))
            return (y, *[x] * shared) if shared else y
        return bn_relu.BatchNormReLUFunction.apply(x, *self.batch_statistics(x), shared)

    def batch_statistics(self, x: torch.Tensor):
        """``(weight, bias, mean, invstd)`` for a batch-statistics forward on the kernel (the
        running statistics updated as ``nn.BatchNorm3d`` does): what the fused ops take."""
        mean, var = bn_relu.batch_moments(x)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        invstd = torch.rsqrt(var + self.eps)
        weight = self.weight if self.weight is not None else torch.ones_like(mean)
        bias = self.bias if self.bias is not None else torch.zeros_like(mean)
        return weight, bias, mean, invstd

    def applies(self, x: torch.Tensor) -> bool:
        """Whether this call runs on the kernel: a channels-last clip on the CPU; fp32 on a
        channels-last path, or bf16 under CPU bf16 autocast where the library's bf16 rows run
        (``bf16_path``); a batch-statistics forward with more than one value per channel (in bf16,
        with gradients: training), or an eval-mode one without gradients (an eval-mode BatchNorm
        with gradients is PyTorch's own). In bf16 the statistics, sums and terms are fp32 (fp64
        across blocks), the output and grad x bf16, the parameters' gradients and the running
        statistics fp32, as autocast keeps them."""
        if not (x.device.type == "cpu" and x.dim() == 5 and x.shape[1] == self.num_features  # else PyTorch's error
                and x.numel() > 0 and x.is_contiguous(memory_format=torch.channels_last_3d)):
            return False
        if x.dtype == torch.bfloat16:
            if not (bf16.autocast() and paths.bf16_path()):
                return False
            if self.batch_stats():
                return torch.is_grad_enabled() and x.numel() != x.shape[1]
        elif not _cl_input(x, x):
            return False
        if not self.batch_stats():
            wants_grad = x.requires_grad or any(p.requires_grad for p in self.parameters())
            return not (torch.is_grad_enabled() and wants_grad)
        return x.numel() != x.shape[1]  # one value per channel: PyTorch's own says so

    def bf16_training(self, x: torch.Tensor) -> bool:
        """Whether this call is bf16 training on the kernel (``applies``): a batch-statistics
        forward of a bf16 clip with gradients."""
        return x.dtype == torch.bfloat16 and torch.is_grad_enabled() and self.batch_stats() and self.applies(x)

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, rows: int) -> None:
        """As ``nn.BatchNorm3d`` in training: momentum (or the cumulative average where it is
        None), the unbiased variance."""
        if not (self.training and self.track_running_stats):
            return
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            if self.running_mean is not None:
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (rows / (rows - 1)), factor)


class FusedReLU(nn.Identity):
    """Where a ``ReLU`` stood after a ``BatchNormReLU3d``, which applies it: an identity that
    remembers the ReLU's ``inplace``, so the ReLU can be put back."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "applied by the BatchNormReLU3d before it"


class MaxPool3d(nn.MaxPool3d):
    """A ``MaxPool3d`` that pools a bf16 channels-last clip in bf16 on the library's op in bf16
    autocast inference (``bf16.max_pool``), where autocast runs PyTorch's max pool in fp32 with a
    cast each way; everywhere else the module it replaced. (MF-Net's stem pool: 17 ms of casts
    and pooling at batch 4 before, docs/kernels-log.md.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._in_bf16(x):
            return bf16.max_pool(x, *(_triple(v) for v in (self.kernel_size, self.stride, self.padding)))
        return stock_class(self, nn.MaxPool3d).forward(self, x)

    def _in_bf16(self, x: torch.Tensor) -> bool:
        kernel, padding = _triple(self.kernel_size), _triple(self.padding)
        return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 5 and x.numel() > 0
                and x.is_contiguous(memory_format=torch.channels_last_3d)
                and not (torch.is_grad_enabled() and x.requires_grad)
                and _triple(self.dilation) == (1, 1, 1) and not self.return_indices and not self.ceil_mode
                and all(2 * p <= k for k, p in zip(kernel, padding))  # else PyTorch's error
                and all(s + 2 * p >= k for s, k, p in zip(x.shape[2:], kernel, padding))
                and bf16.autocast())


__all__ = ["BatchNormReLU3d", "FiberConv3d", "FusedReLU", "MaxPool3d", "OneDNNPointwiseConv3d", "PointwiseConv3d",
           "hooked"]
