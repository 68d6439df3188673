"""The suite's fiber-conv kernel: MF-Net's grouped (KT, 3, 3) convs as a direct C++ kernel.

The paper's footnote 5 blames MF-Net's slow wall-clock on unoptimised grouped convolutions. On
a CPU, oneDNN's grouped kernels are weak at MF-Net's 6-48 channels per group; a direct kernel
(``models/csrc/fiber_conv.cpp``) vectorised along the output row, with borders handled inside
the kernel (no padded copy), does better on the large planes. Forward and backward.

- Built on first use with ``torch.utils.cpp_extension.load`` (ninja, the system C++
  compiler) and cached per machine in torch's extensions folder.
- Paths: AVX2 + FMA where the CPU has them, a scalar one otherwise (and for fp64, which
  ``gradcheck`` uses). ``MFNET_FIBER_KERNEL=off`` forces PyTorch's own conv;
  ``MFNET_FIBER_KERNEL=scalar`` forces the scalar path.
- Where the kernel cannot be built (no compiler, a failed build), ``FiberConv3d`` falls back
  to ``nn.Conv3d`` and says so once, in one line; ``status()`` is recorded in a run's
  environment.
"""

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).resolve().parent / "csrc" / "fiber_conv.cpp"
SWITCH = "MFNET_FIBER_KERNEL"  # off | scalar | (unset: the fastest path this CPU has)
_loaded: dict = {}


def extension():
    """The compiled kernel, or None (with the reason in ``status()``): built once per process,
    from the cache after the first build on this machine."""
    if "module" in _loaded:
        return _loaded["module"]
    module, why = None, ""
    if os.environ.get(SWITCH, "").lower() == "off":
        why = f"{SWITCH}=off"
    else:
        try:
            from torch.utils import cpp_extension

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no CUDA runtime": this is a CPU kernel
                module = cpp_extension.load("mfnet_fiber_conv", [str(SOURCE)],
                                            extra_cflags=["-O3"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, a failed build: fall back, say why
            last = (str(exc).strip().splitlines() or [""])[-1]  # a build log ends with its cause
            why = f"the kernel could not be built ({type(exc).__name__}: {last})"
            warnings.warn(f"fiber convs run on PyTorch's own kernels: {why}", stacklevel=2)
    _loaded.update(module=module, why=why)
    return module


def force_scalar() -> bool:
    return os.environ.get(SWITCH, "").lower() == "scalar"


def status(build: bool = True) -> str:
    """What MF-Net's fiber convs run on here, for a run's environment record. ``build=False``
    reports without building: a run whose models never asked for the kernel does not pay the
    first build (about a minute) to say so."""
    if not build and "module" not in _loaded:
        return "not loaded: stock PyTorch kernels (MF-Net's fiber_kernel=True opts in)"
    module = extension()
    if module is None:
        return f"stock PyTorch kernels: {_loaded['why']}"
    return f"suite kernel ({module.path(force_scalar())})"


def flipped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight of the convolution that maps grad y to grad x (stride 1, same padding):
    per group, input and output channels swapped and every kernel turned by 180 degrees."""
    cout, cin_g, kt = weight.shape[:3]
    cout_g = cout // groups
    return (weight.reshape(groups, cout_g, cin_g, kt, 3, 3).transpose(1, 2).flip(3, 4, 5)
            .reshape(groups * cin_g, cout_g, kt, 3, 3).contiguous())


class FiberConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.groups = groups
        return extension().forward(x, weight, groups, force_scalar())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        ext, scalar = extension(), force_scalar()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = ext.forward(grad, flipped(weight, ctx.groups), ctx.groups, scalar)
        if ctx.needs_input_grad[1]:
            grad_w = ext.grad_weight(x, grad, ctx.groups, weight.shape[2], scalar)
        return grad_x, grad_w, None


def fiber_conv3d(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``F.conv3d(x, weight, padding=(KT // 2, 1, 1), groups=groups)`` on the suite's kernel."""
    return FiberConvFunction.apply(x.contiguous(), weight.contiguous(), groups)


class FiberConv3d(nn.Conv3d):
    """A grouped ``Conv3d`` that runs on the suite's kernel where it applies: CPU, fp32 or fp64,
    a (1 or 3, 3, 3) kernel at stride 1 with same padding, no bias, an NCDHW input, outside
    autocast, ``torch.compile`` and tracing. Everywhere else it is a plain ``Conv3d``: the same
    parameters, the same checkpoint keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._on_kernel(x):
            return fiber_conv3d(x, self.weight, self.groups)
        return super().forward(x)

    def _on_kernel(self, x: torch.Tensor) -> bool:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return False
        kt = self.kernel_size[0]
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and x.dtype == self.weight.dtype and x.is_contiguous() and self.bias is None
                and self.kernel_size[1:] == (3, 3) and kt in (1, 3)
                and self.stride == (1, 1, 1) and self.padding == (kt // 2, 1, 1)
                and self.dilation == (1, 1, 1) and self.padding_mode == "zeros"
                and not torch.is_autocast_enabled("cpu") and extension() is not None)


def reference(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """PyTorch's own conv for the same arguments, what the kernel is tested against."""
    return F.conv3d(x, weight, padding=(weight.shape[2] // 2, 1, 1), groups=groups)
