"""Which instruction-set path the kernels take in this process, chosen once.

Paths: ``avx512`` where the CPU has AVX-512F (the channels-last fiber convs, their weight
gradient and the pointwise convs; the NCDHW ops and BatchNorm + ReLU are AVX2 code on every
path), else ``avx2`` (AVX2 + FMA), else ``scalar`` (the NCDHW fiber conv only; channels-last
convs then run on PyTorch's). ``avx512-emulated`` is the AVX-512 build's blocking on pairs of
AVX2 registers, how tests check its logic on CPUs without AVX-512.

bf16 inference (``ops/bf16.py``) has paths of its own (``bf16_path()``): ``avx512-bf16`` where
the CPU has AVX512-BF16, after its rows agreed with the emulated build here; ``bf16-emulated``
(that build: the same rounding in integers, any x86-64 CPU) where the switch asks for it, for
tests; else none, and autocast runs the fp32 kernels inside the units (``bf16-fallback`` forces
that, for comparisons).

``MFNET_FIBER_KERNEL`` picks one: ``off`` PyTorch's own kernels (the library is never built),
or a path name (``bf16-emulated`` leaves the fp32 path the CPU's best); a path the CPU cannot
run gets the best one below it, said once. The AVX-512 build runs only after it agreed with the
AVX2 path here (``selfcheck.py``).

The choice is resolved once per value of the switch into the library's table of entry points
(``table()``, ``csrc/isa.h``), which every channels-last op is given: no name is compared per
call.
"""

import os
import warnings

from models.kernels import build, selfcheck

SWITCH = build.SWITCH
PATHS = ("scalar", "avx2", "avx512", "avx512-emulated")
CL_PATHS = PATHS[1:]  # the paths with a channels-last kernel
BF16_NATIVE, BF16_EMULATED = "avx512-bf16", "bf16-emulated"
BF16_FALLBACK = "bf16-fallback"  # the switch's value for what a CPU without native bf16 runs


def wish() -> str:
    """The switch's value: "" (the fastest path this CPU has), off, or one of ``PATHS``; a value
    that means nothing is a one-line ValueError."""
    value = os.environ.get(SWITCH, "").strip().lower()
    if value and value not in ("off", BF16_EMULATED, BF16_FALLBACK, *PATHS):
        raise ValueError(f"{SWITCH}={value!r}: use off, {', '.join(PATHS)}, {BF16_EMULATED}, {BF16_FALLBACK} "
                         "(unset: the fastest this CPU has)")
    return value


def path() -> str:
    """The path fp32 convs take in this process: one of ``PATHS``, or "" where the library is
    not built. The CPU's best unless the switch asks for another."""
    module = build.extension()
    if module is None:
        return ""
    # kept beside the library (a test that resets it resets these); a training step asks
    # hundreds of times
    memo = ("path", os.environ.get(SWITCH))
    if memo not in build._loaded:
        build._loaded[memo] = _resolve(module, wish())
    return build._loaded[memo]


def _resolve(module, want: str) -> str:
    got = module.best_path(want)
    if got == "avx512":
        if "avx512 agrees" not in build._loaded:
            build._loaded["avx512 agrees"] = selfcheck.agrees(module, module.isa("avx512"), module.isa("avx2"))
        got = "avx512" if build._loaded["avx512 agrees"] else "avx2"
    if want in PATHS and got != want and not build._loaded.get(("told", want)):
        build._loaded[("told", want)] = True
        warnings.warn(f"{SWITCH}={want}: this CPU cannot run it; fiber convs take the {got} path",
                      stacklevel=4)
    return got


def bf16_path() -> str:
    """The path bf16 inference's rows take here: ``BF16_NATIVE`` where the CPU has AVX512-BF16
    and its build agreed with the emulated one, ``BF16_EMULATED`` where the switch asks for it,
    else "" (no native bf16, or the switch's ``bf16-fallback``: bf16 autocast runs the units on
    the fp32 kernels)."""
    module = build.extension()
    if module is None:
        return ""
    memo = ("bf16 path", os.environ.get(SWITCH))
    if memo not in build._loaded:
        if wish() in (BF16_EMULATED, BF16_FALLBACK):
            build._loaded[memo] = BF16_EMULATED if wish() == BF16_EMULATED else ""
        elif module.cpu_has_avx512_bf16():
            if "bf16 agrees" not in build._loaded:
                build._loaded["bf16 agrees"] = selfcheck.bf16_rows_agree(module)
            build._loaded[memo] = BF16_NATIVE if build._loaded["bf16 agrees"] else ""
        else:
            build._loaded[memo] = ""
    return build._loaded[memo]


def table():
    """The library's table of entry points for this process's channels-last path (``path()``
    in ``CL_PATHS``), which every channels-last op is given."""
    name = path()
    key = ("table", name)
    if key not in build._loaded:
        build._loaded[key] = build.extension().isa(name)
    return build._loaded[key]


def channels_last_path() -> bool:
    """Whether channels-last convs run on the library here (a channels-last path was chosen)."""
    return path() in CL_PATHS


def cpu_has_avx512() -> bool:
    """Whether this CPU runs AVX-512F, whatever the switch asks for: where it does, oneDNN runs
    its own AVX-512 kernels for PyTorch's convs too."""
    module = build.extension()
    return module is not None and module.cpu_has("avx512")


def force_scalar() -> bool:
    return path() == "scalar"
