"""The suite's CPU kernel library: MF-Net's fiber convs, pointwise convs and BatchNorm + ReLU as
direct C++ (``csrc/``), and the rewrite that puts a plain model on them.

    from models import kernels

    kernels.optimize(model)           # swap modules for fused equivalents, in place
    kernels.use_stock_kernels(model)  # and back: PyTorch's own kernels, module for module
    kernels.status()                  # what runs here, e.g. "suite kernel (avx512); ..."
    kernels.isa()                     # the instruction-set path chosen: avx512, avx2, scalar or ""

Layers, each importing only those below it: the loader and the instruction-set choice
(``build.py``, ``paths.py``, ``selfcheck.py``), the ops (``ops/``: autograd functions over the C++),
the fused modules (``modules.py``, ``blocks.py``), and the rewrite (``rewrite.py``). Nothing
here imports the rest of ``models``: a model file is the paper's architecture, and whoever
builds a model decides whether to optimize it. ``docs/kernels.md`` says what runs where, how it
is built and checked, and how to add an op.
"""

from models.kernels.ops.fiber import fiber_conv3d
from models.kernels.paths import path as isa
from models.kernels.rewrite import (
    applies,
    optimize,
    pin_pointwise_to_onednn,
    register_block,
    use_kernels,
    use_stock_kernels,
)
from models.kernels.state import check_settings, status, why_not

__all__ = ["applies", "check_settings", "fiber_conv3d", "isa", "optimize", "pin_pointwise_to_onednn", "register_block",
           "status", "use_kernels", "use_stock_kernels", "why_not"]
