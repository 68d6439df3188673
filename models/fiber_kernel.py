"""The suite's fiber-conv kernel: grouped (KT, 3, 3) convs, MF-Net's fiber convs, as direct C++.

The paper's footnote 5 blames MF-Net's slow wall-clock on unoptimised grouped convolutions;
this kernel (``models/csrc/``: ``fiber_conv.cpp`` NCDHW and the bindings, ``fiber_cl*.cpp`` and
``fiber_cl_kernels.h`` channels last) is the suite's test of that forecast. Two layouts:

- channels last (MF-Net's default), any stride: vectorised over a group's output channels or
  along the row, each task packing its groups' input rows compactly first (each frame once per
  run of output frames); forward and the weight gradient, and the input gradient at stride 1.
  In inference, a residual added to the conv's output can go in as it is written
  (``forward_folded(..., residual)``, MF-Net's ``BNReLUConv.plus``).
  In inference, a BatchNorm + ReLU before the conv is folded into that packing
  (``FiberConv3d.forward_after``, which MF-Net's ``BNReLUConv`` calls);
- NCDHW, stride 1: vectorised along the output row; forward and both gradients.

Borders are handled inside the kernel (no padded copy). ``docs/fiber-kernel.md`` has the
measured rates and what the code relies on.

- Built on first use with ``torch.utils.cpp_extension.load`` (ninja, the system C++ compiler,
  OpenMP) and cached per machine in torch's extensions folder.
- Paths (``path()``): AVX-512 where the CPU has it (channels last; its NCDHW and weight-gradient
  code is AVX2's), else AVX2 + FMA; otherwise a scalar NCDHW path (also used for fp64, which
  ``gradcheck`` uses) and PyTorch's conv for channels last. ``MFNET_FIBER_KERNEL`` picks one:
  ``off`` PyTorch's own conv, ``scalar`` what a CPU without AVX2 gets, ``avx2`` what a CPU
  without AVX-512 gets, ``avx512-emulated`` the AVX-512 path's code on pairs of AVX2 registers
  (slow; how tests check it on CPUs without AVX-512). The AVX-512 build is checked against the
  AVX2 path once per process before it is used (``_agrees``).
- Where the kernel cannot be built (no compiler, a failed build), ``FiberConv3d`` falls back
  to ``nn.Conv3d`` and says so once, in one line; ``status()`` is recorded in a run's
  environment.
- MF-Net's default path (``MFNet(fiber_kernel=None)``). ``use_kernel(model)`` puts any model's
  grouped convs on it (the harness's default, ``run.py --fiber-kernel suite``), and in a model
  with such convs each BatchNorm + ReLU pair too (``models/bn_relu.py``); ``use_stock`` undoes it.
- Loading it also puts a pool for large CPU blocks in front of PyTorch's allocator
  (``csrc/pool.cpp``, ``MFNET_LARGE_BLOCK_POOL``).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).resolve().parent / "csrc" / "fiber_conv.cpp"
# one extension: the fiber convs (NCDHW; channels last, with its AVX-512 build), the
# pre-activation pointwise convs (models/pointwise.py), BatchNorm + ReLU, the large-block pool
SOURCES = [SOURCE] + [SOURCE.with_name(f"{name}.cpp") for name in (
    "fiber_cl", "fiber_cl_avx512", "fiber_cl_emulated", "pointwise_cl", "bn_relu", "pool")]
NAME = "mfnet_fiber_conv"
SWITCH = "MFNET_FIBER_KERNEL"  # off | one of PATHS | (unset: the fastest path this CPU has)
PATHS = ("scalar", "avx2", "avx512", "avx512-emulated")
CL_PATHS = PATHS[1:]  # the paths with a channels-last kernel
# off | MiB kept at most | (unset: a quarter of memory): freed CPU blocks of 32 MiB and up kept
POOL_SWITCH = "MFNET_LARGE_BLOCK_POOL"
PROFILED_AS = "suite::fiber_conv"  # the kernel's forward, as torch.profiler's tables name it
PACKED, EVAL_AFFINE = "_pack_cache", "_suite_eval_affine"  # what ``kept`` holds on a module
_loaded: dict = {}


def _build_dir() -> Path:
    from torch.utils import cpp_extension

    try:  # where load() builds and caches (TORCH_EXTENSIONS_DIR, torch's own layout)
        return Path(cpp_extension._get_build_directory(NAME, False))
    except Exception:
        return Path(cpp_extension.get_default_build_root()) / NAME


def _loads_in_a_child(library: Path) -> bool:
    """Whether a fresh process can load ``library``. A damaged one (a build killed while it
    linked, a truncated copy) kills the process that loads it with SIGBUS, so it is tried where
    that costs nothing."""
    code = (f"import torch, importlib.util as u; s = u.spec_from_file_location({NAME!r}, "
            f"{str(library)!r}); s.loader.exec_module(u.module_from_spec(s))")
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True,
                              timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_cache() -> None:
    """Before loading: a cached library that no process of this suite has loaded yet (its
    digest is not in ``verified``) is first loaded in a child; one that fails there is removed
    with its build folder, so ``load`` builds it afresh rather than crash this process."""
    folder = _build_dir()
    library, stamp = folder / f"{NAME}.so", folder / "verified"
    if not library.is_file():
        return
    if stamp.is_file() and stamp.read_text() == _digest(library):
        return
    if not _loads_in_a_child(library):
        warnings.warn(f"the cached fiber kernel in {folder} does not load; building it afresh",
                      stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)


def _mark_verified() -> None:
    library = _build_dir() / f"{NAME}.so"
    try:
        (library.parent / "verified").write_text(_digest(library))
    except OSError:
        pass  # a read-only cache: the next process checks again, nothing worse


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

            check_cache()
            if not (_build_dir() / f"{NAME}.so").is_file():
                print("building the suite's fiber-conv kernel, once per machine (about a minute)",
                      file=sys.stderr, flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no CUDA runtime": this is a CPU kernel
                # -fopenmp: at::parallel_for is a header template; built without it, the
                # kernel runs on one thread whatever torch.get_num_threads() says. The
                # extension links libgomp.so.1, the same soname torch already loaded.
                module = cpp_extension.load(NAME, [str(s) for s in SOURCES],
                                            extra_cflags=["-O3", "-fopenmp"],
                                            extra_ldflags=["-fopenmp"], verbose=False)
            _mark_verified()
        except Exception as exc:  # no compiler, no ninja, a failed build: fall back, say why
            last = (str(exc).strip().splitlines() or [""])[-1]  # a build log ends with its cause
            why = f"the kernel could not be built ({type(exc).__name__}: {last})"
            warnings.warn(f"fiber convs run on PyTorch's own kernels: {why}", stacklevel=2)
    _loaded.update(module=module, why=why, pool=module is not None and _install_pool(module))
    return module


def _install_pool(module) -> bool:
    """The large-block pool (``csrc/pool.cpp``) in front of PyTorch's CPU allocator, unless
    ``POOL_SWITCH`` is off."""
    cap = pool_cap()
    return cap is not None and module.pool_install(cap)


def pool_cap() -> int | None:
    """The most bytes of freed blocks the pool keeps: ``POOL_SWITCH`` MiB, by default a quarter
    of this machine's memory; None where it is off. A value that means nothing is a one-line
    ValueError, not a silent default."""
    value = os.environ.get(POOL_SWITCH, "").strip().lower()
    if value == "off":
        return None
    if value and not (value.isdigit() and int(value) > 0):
        raise ValueError(f"{POOL_SWITCH}={value!r}: use off or a size in MiB (e.g. 2048)")
    return int(value) << 20 if value else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def wish() -> str:
    """``SWITCH``'s value: "" (the fastest path this CPU has), off, or one of ``PATHS``; a value
    that means nothing is a one-line ValueError."""
    value = os.environ.get(SWITCH, "").strip().lower()
    if value and value != "off" and value not in PATHS:
        raise ValueError(f"{SWITCH}={value!r}: use off, {', '.join(PATHS)} "
                         "(unset: the fastest this CPU has)")
    return value


def path() -> str:
    """The path fp32 fiber convs take in this process: one of ``PATHS``, or "" where the kernel
    is not built. The CPU's best unless ``SWITCH`` asks for another; one it cannot grant gets the
    best below it, said once. The AVX-512 build runs only after it agreed with the AVX2 path
    here (``_agrees``)."""
    module = extension()
    if module is None:
        return ""
    # kept per value of the switch: a training step asks hundreds of times
    memo = ("path", os.environ.get(SWITCH))
    if memo in _loaded:
        return _loaded[memo]
    want = wish()
    got = module.path(want)
    if got == "avx512":
        if "avx512" not in _loaded:
            _loaded["avx512"] = _agrees(module, "avx512")
        got = "avx512" if _loaded["avx512"] else "avx2"
    if want in PATHS and got != want and not _loaded.get(("told", want)):
        _loaded[("told", want)] = True
        warnings.warn(f"{SWITCH}={want}: this CPU cannot run it; fiber convs take the {got} path",
                      stacklevel=2)
    _loaded[memo] = got
    return got


def cpu_has_avx512() -> bool:
    """Whether this CPU runs AVX-512F, whatever ``SWITCH`` asks for: where it does, oneDNN runs
    its own AVX-512 kernels for PyTorch's convs too."""
    module = extension()
    return module is not None and module.path("avx512") == "avx512"


def force_scalar() -> bool:
    return path() == "scalar"


# (cin_g, cout_g, KT, stride): each register-block form of the channels-last forward, with rows
# and channel counts that leave tails (``_agrees``)
SELF_CHECK = [(6, 6, 3, (1, 1, 1)), (12, 12, 1, (1, 1, 1)), (3, 2, 3, (1, 1, 1)),
              (1, 6, 3, (2, 1, 1)), (6, 12, 3, (1, 2, 2)), (24, 24, 3, (1, 1, 1)),
              (40, 48, 1, (1, 2, 2)), (5, 17, 3, (2, 1, 1))]


def _agrees(module, candidate: str, reference: str = "avx2") -> bool:
    """Whether ``candidate``'s channels-last forward and weight gradient equal ``reference``'s
    (within fp32 rounding) on every form in ``SELF_CHECK``, BatchNorm + ReLU folding included,
    and its pointwise convs too. A path that disagrees is not used, with one line saying so: a
    build this machine's tests never ran (the AVX-512 one, on a CPU the suite's CI lacks) cannot
    give silently wrong numbers."""
    gen = torch.Generator().manual_seed(0)
    for cin_g, cout_g, kt, stride in SELF_CHECK:
        groups = 2
        x = torch.randn(2, groups * cin_g, 5, 6, 19, generator=gen).contiguous(
            memory_format=torch.channels_last_3d)
        weight = torch.randn(groups * cout_g, cin_g, kt, 3, 3, generator=gen)
        scale, shift = torch.rand(groups * cin_g, generator=gen), torch.randn(groups * cin_g, generator=gen)
        outs = [module.forward_cl(x, module.pack_cl(weight, groups, p), cout_g, list(stride), p,
                                  scale, shift) for p in (candidate, reference)]
        grads = [module.grad_weight_cl(x, outs[1], groups, kt, list(stride), p)
                 for p in (candidate, reference)]
        if not (_close(*outs) and _close(*grads)):
            warnings.warn(f"the fiber kernel's {candidate} path disagrees with its {reference} path "
                          f"on this CPU (a {cin_g}->{cout_g} per group conv); using {reference}",
                          stacklevel=3)
            return False
    # the pointwise convs' build (models/pointwise.py): a strided conv with a residual and
    # channels off the vector width, and a multiplexer
    x = torch.randn(2, 40, 3, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    w, w1, w2 = (torch.randn(co, k, 1, 1, 1, generator=gen) for co, k in ((50, 40), (30, 40), (40, 30)))
    s40, s30 = (torch.rand(n, generator=gen) for n in (40, 30))
    residual = torch.randn(2, 50, 2, 4, 5, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    y30, x30 = (torch.randn(2, 30, 3, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last_3d)
                for _ in range(2))
    outs = [(module.pointwise_cl(x, module.pack_pointwise(w, p), 50, [2, 2, 2], s40, s40 - 0.5,
                                 residual, path=p),
             module.multiplexer_cl(x, module.pack_pointwise(w1, p), 30, s40, s40 - 0.5,
                                   module.pack_pointwise(w2, p), s30, s30 - 0.5, p),
             module.grad_weight_pointwise(x, residual, [2, 2, 2], p),
             module.grad_weight_pointwise(residual, x[:, :, ::2, ::2, ::2].contiguous(
                 memory_format=torch.channels_last_3d), [1, 1, 1], p),
             # training's backward with BatchNorm + ReLU folded in, both ways round (40 -> 30:
             # the conv's input gradient the wider; 30 -> 40), with and without a gradient to
             # add, and strided
             *module.bn_pointwise_backward(y30, x, module.pack_pointwise(w1, p, transposed=True),
                                           s40 - 0.5, s40 + 0.5, s40, s40 - 0.5, [x], [1, 1, 1], p, True),
             *module.bn_pointwise_backward(x, x30, module.pack_pointwise(w2, p, transposed=True),
                                           s30 - 0.5, s30 + 0.5, s30, s30 - 0.5, [], [1, 1, 1], p, True),
             *module.bn_pointwise_backward(residual, x, module.pack_pointwise(w, p, transposed=True),
                                           s40 - 0.5, s40 + 0.5, s40, s40 - 0.5, [], [2, 2, 2], p, True))
            for p in (candidate, reference)]
    if not all(_close(a, b) for a, b in zip(*outs)):
        warnings.warn(f"the pointwise kernel's {candidate} path disagrees with its {reference} path "
                      f"on this CPU; using {reference}", stacklevel=3)
        return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def pack(weight: torch.Tensor, groups: int, turned: bool = False) -> torch.Tensor:
    """``weight`` in the channels-last forward's layout for this process's path; ``turned``:
    the packing of ``flipped(weight, groups)``, the input gradient's conv, made from ``weight``
    in one pass."""
    return extension().pack_cl(weight, groups, path(), turned)


def forward_cl(x: torch.Tensor, packed: torch.Tensor, cout_g: int, stride, scale=None, shift=None,
               residual=None):
    """The channels-last forward on this process's path (``packed`` by ``pack``), plus
    ``residual`` (the output's shape, channels last) where given."""
    return extension().forward_cl(x, packed, cout_g, list(stride), path(), scale, shift, residual)


def status(build: bool = True) -> str:
    """What MF-Net's fiber convs run on here, for a run's environment record. ``build=False``
    reports without building: a run whose models never asked for the kernel does not pay the
    first build (about a minute) to say so."""
    if not build and "module" not in _loaded:
        return "not loaded: no fiber conv or fused BatchNorm + ReLU has run in this process"
    module = extension()
    if module is None:
        return f"stock PyTorch kernels: {_loaded['why']}"
    taken = path()
    # BatchNorm + ReLU (AVX2 code) and the pointwise convs (the path's own build) run on every
    # channels-last path
    return (f"suite kernel ({taken})"
            + ("; BatchNorm + ReLU fused; pointwise convs fused, and on the kernel in training"
               if taken in CL_PATHS else "")
            + ("; large blocks pooled" if _loaded.get("pool") else ""))


def why_not(device: str, dtype: str = "fp32", compiled: bool = False) -> str:
    """Why MF-Net's fiber convs cannot run on the kernel under a run's conditions, or "" where
    they do (then the kernel is built now, never inside a timing). MF-Net is channels-last
    inside, and its channels-last convs and fused BatchNorm + ReLU need the AVX2 path."""
    if device != "cpu":
        return "it is a CPU kernel (on a GPU the fiber convs run on cuDNN)"
    if compiled or dtype != "fp32":  # compiled graphs and autocast run PyTorch's convs
        return "it is an eager fp32 kernel (compiled graphs and autocast run PyTorch's convs)"
    module = extension()
    if module is None:
        return _loaded["why"]
    if path() not in CL_PATHS:
        return f"this CPU has no AVX2 + FMA, or {SWITCH}=scalar: channels-last convs run on PyTorch's"
    return ""


def eval_affine(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's eval-mode affine, (scale, shift) per channel (fp32, contiguous), for the
    kernel's folded BatchNorm + ReLU: ``scale = weight / sqrt(running_var + eps)``, ``shift =
    bias - running_mean * scale``. Kept on ``bn`` (a plain attribute, no checkpoint key) while
    its parameters and statistics are unchanged."""
    tensors = [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]

    def fold():
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().float()
        shift = -bn.running_mean.float() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().float()
        return scale.contiguous(), shift.contiguous()

    return kept(bn, EVAL_AFFINE, tuple((t.data_ptr(), t._version) for t in tensors), fold)


def traced() -> bool:
    """Whether this call is compiled, traced or run under a dispatch mode (FLOP counters such as
    ``torch.utils.flop_counter.FlopCounterMode``, fake tensors, ``torch.export``). The kernel is
    one opaque call to all of these, so there they get PyTorch's own ops: a FLOP count must see
    the fiber convs."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._len_torch_dispatch_stack() > 0)


def kept(module: nn.Module, name: str, key: tuple, make):
    """``make()``, kept on ``module`` and computed again only when ``key`` changes; in a plain
    attribute, not a buffer, so no checkpoint key."""
    cached = module.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, make())
        module.__dict__[name] = cached
    return cached[1]


def flipped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight of the convolution that maps grad y to grad x (stride 1, same padding):
    per group, input and output channels swapped and every kernel turned by 180 degrees."""
    cout, cin_g, kt = weight.shape[:3]
    cout_g = cout // groups
    return (weight.reshape(groups, cout_g, cin_g, kt, 3, 3).transpose(1, 2).flip(3, 4, 5)
            .reshape(groups * cin_g, cout_g, kt, 3, 3).contiguous())


def channels_last(x: torch.Tensor, stride=(1, 1, 1)) -> bool:
    """Whether the kernel reads ``x`` as NDHWC, MF-Net's default layout: an NDHWC tensor, or
    one that is both layouts at once (one channel, or one pixel) where the conv is strided,
    which only the channels-last kernel handles. Otherwise it reads NCDHW (stride 1)."""
    if not x.is_contiguous(memory_format=torch.channels_last_3d):
        return False
    return not x.is_contiguous() or tuple(stride) != (1, 1, 1)


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


def _input_gradient_cl(grad, x, weight, groups, stride):
    """The channels-last conv's input gradient: the kernel with ``flipped`` weights at stride 1,
    by phases where only time is strided, PyTorch's own where space is."""
    if tuple(stride) == (1, 1, 1):
        return forward_cl(grad, pack(weight, groups, turned=True), weight.shape[1], (1, 1, 1))
    if tuple(stride[1:]) == (1, 1):
        return _time_strided_grad_input(grad, x, weight, stride, groups)
    return _stock_grad_input(grad, x, weight, stride, groups)


class BNReLUFiberFunction(torch.autograd.Function):
    """``conv(relu(x * scale + shift)) (+ residual)`` in training, channels last: the batch's
    BatchNorm + ReLU (as ``BatchNormReLUFunction``) folded into the kernel's packing of its input
    in the forward and again in the weight gradient's, so the activated input is never written
    out (one pass over x fewer and one activation-sized tensor fewer kept). Only where the weight
    gradient packs its input anyway (``FiberConv3d.trains_folded``): its narrow form reads x in
    place, where an activation per value would cost more than the pass saved."""

    @staticmethod
    def forward(ctx, x, bn_weight, bn_bias, mean, invstd, weight, groups, stride, residual):
        from models.bn_relu import batch_affine

        scale, shift = batch_affine(bn_weight, bn_bias, mean, invstd)
        ctx.save_for_backward(x, mean, invstd, scale, shift, weight)
        ctx.groups, ctx.stride = groups, stride
        with torch.profiler.record_function(PROFILED_AS):
            return forward_cl(x, pack(weight, groups), weight.shape[0] // groups, stride, scale, shift,
                              residual)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, invstd, scale, shift, weight = ctx.saved_tensors
        groups, stride = ctx.groups, ctx.stride
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        ext = extension()
        grad_x = grad_bn_weight = grad_bn_bias = grad_w = None
        if ctx.needs_input_grad[5]:
            grad_w = ext.grad_weight_cl(x, grad, groups, weight.shape[2], list(stride), path(), scale, shift)
        if any(ctx.needs_input_grad[:3]):
            grad_a = _input_gradient_cl(grad, x, weight, groups, stride)
            grad_x, grad_bn_weight, grad_bn_bias = ext.bn_relu_backward(grad_a, x, mean, invstd, scale, shift)
        grad_residual = grad if ctx.needs_input_grad[8] else None
        return grad_x, grad_bn_weight, grad_bn_bias, None, None, grad_w, None, None, grad_residual


class FiberConvFunction(torch.autograd.Function):
    """The conv on the kernel, in either layout, with its two gradients:

    - NCDHW (stride 1): forward, the input's gradient (the forward with ``flipped`` weights)
      and the weight's, all on the kernel;
    - channels last: forward and the weight's gradient on the kernel at any stride; the
      input's gradient on the kernel at stride 1 and where only time is strided
      (``_time_strided_grad_input``), on PyTorch's own (``convolution_backward``) where space
      is."""

    @staticmethod
    def forward(ctx, x, weight, groups, stride, packed=None, residual=None):
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.stride = groups, stride
        ext = extension()
        with torch.profiler.record_function(PROFILED_AS):
            if channels_last(x, stride):
                packed = pack(weight, groups) if packed is None else packed
                return forward_cl(x, packed, weight.shape[0] // groups, stride, residual=residual)
            # a channels-last model's weights are channels last too
            y = ext.forward(x, weight.contiguous(), groups, force_scalar())
            return y if residual is None else y.add_(residual)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        groups, stride = ctx.groups, ctx.stride
        ext, scalar = extension(), force_scalar()
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        if channels_last(x, stride):
            grad = grad.contiguous(memory_format=torch.channels_last_3d)
            if need_x:
                grad_x = _input_gradient_cl(grad, x, weight, groups, stride)
            if need_w:
                grad_w = ext.grad_weight_cl(x, grad, groups, weight.shape[2], list(stride), path())
            return grad_x, grad_w, None, None, None, grad if ctx.needs_input_grad[5:] == (True,) else None
        grad = grad.contiguous()
        if need_x:
            grad_x = ext.forward(grad, flipped(weight, groups), groups, scalar)
        if need_w:
            grad_w = ext.grad_weight(x, grad, groups, weight.shape[2], scalar)
        return grad_x, grad_w, None, None, None, grad if ctx.needs_input_grad[5:] == (True,) else None


def fiber_conv3d(x: torch.Tensor, weight: torch.Tensor, groups: int,
                 stride=(1, 1, 1)) -> torch.Tensor:
    """``F.conv3d(x, weight, stride, padding=(KT // 2, 1, 1), groups=groups)`` on the suite's
    kernel: channels-last inputs (any stride) stay channels last, others run NCDHW (stride 1)."""
    stride = tuple(stride)
    if not channels_last(x, stride):
        x = x.contiguous(memory_format=torch.contiguous_format if stride == (1, 1, 1)
                         else torch.channels_last_3d)
    return FiberConvFunction.apply(x, weight.contiguous(), groups, stride)


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward hook (on one of ``modules``, or global) would see a call that a folded
    op makes without calling the module: then the modules run as modules, so hooks
    (``op_profile.py``'s, a user's) see what they always have."""
    from torch.nn.modules import module

    return (bool(module._global_forward_hooks or module._global_forward_pre_hooks)
            or any(m._forward_hooks or m._forward_pre_hooks for m in modules))


class FiberConv3d(nn.Conv3d):
    """A grouped ``Conv3d`` that runs on the suite's kernel where it applies: CPU, a (1 or 3, 3,
    3) kernel with same padding, no bias, outside autocast, ``torch.compile`` and tracing; a
    channels-last fp32 input on an AVX2 CPU at any stride, or a contiguous fp32/fp64 input at
    stride 1. Everywhere else it is a plain ``Conv3d``: the same parameters, the same
    checkpoint keys. In inference the packed weights are kept until the weight changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._on_kernel(x):
            return FiberConvFunction.apply(x, self.weight, self.groups, self.stride, self._packed(x))
        return super().forward(x)

    def plus(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``self(x) + residual``; on the kernel (channels last) the add goes into the output as
        each row is written, and the residual's gradient is the output's, passed on as it is."""
        from models import pointwise

        if (self._on_kernel(x) and channels_last(x, self.stride) and not hooked(self)
                and pointwise.residual_fits(self, x, residual)):
            return FiberConvFunction.apply(x, self.weight, self.groups, self.stride, self._packed(x),
                                           residual)
        return self(x).add_(residual)

    def trains_folded(self, bn: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``self(relu(bn(x)))`` runs as ``BNReLUFiberFunction`` (``forward_trained``):
        gradients wanted, ``bn`` a batch-statistics ``BatchNormReLU3d`` on the kernel, a
        channels-last input on the kernel, no hook on the conv, and a conv whose weight gradient
        packs its input (not the narrow form, ``wgrad_in_place``)."""
        from models.bn_relu import BatchNormReLU3d

        return (torch.is_grad_enabled() and isinstance(bn, BatchNormReLU3d)
                and (bn.training or bn.running_mean is None) and bn.applies(x)
                and self._on_kernel(x) and channels_last(x, self.stride) and not hooked(self)
                and not extension().wgrad_in_place(self.out_channels // self.groups,
                                                   list(self.stride), path()))

    def forward_trained(self, bn: nn.Module, x: torch.Tensor,
                        residual: torch.Tensor | None = None) -> torch.Tensor:
        """``self(relu(bn(x))) (+ residual)`` as ``BNReLUFiberFunction``; only where
        ``trains_folded`` (and, with a residual, ``pointwise.residual_fits``) says so."""
        from models.bn_relu import PROFILED_AS as BN_PROFILED_AS

        with torch.profiler.record_function(BN_PROFILED_AS):
            statistics = bn.batch_statistics(x)
        return BNReLUFiberFunction.apply(x, *statistics, self.weight, self.groups, self.stride, residual)

    def _packed(self, x: torch.Tensor):
        """The channels-last weight packing, kept while the weight is unchanged and no gradient
        is wanted (a training step packs afresh: its weight changes every step)."""
        if not channels_last(x, self.stride) or (torch.is_grad_enabled() and self.weight.requires_grad):
            return None
        return kept(self, PACKED, (self.weight.data_ptr(), self.weight._version, path()),
                    lambda: pack(self.weight.detach(), self.groups))

    def forward_after(self, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``self(relu(bn(x)))``: folded (``forward_folded``) where ``folds`` says so, else the
        three as they are."""
        if self.folds(bn, x):
            return self.forward_folded(bn, x)
        return self(F.relu(bn(x), inplace=True))

    def folds(self, bn: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``bn`` and a ReLU before this conv can be folded into the kernel: inference,
        ``bn`` an eval-mode ``BatchNorm3d``, a channels-last input on the kernel, and no forward
        hook on the conv."""
        return (not torch.is_grad_enabled() and isinstance(bn, nn.BatchNorm3d) and not bn.training
                and bn.running_mean is not None and not hooked(self) and self._on_kernel(x)
                and channels_last(x, self.stride))

    def forward_folded(self, bn: nn.BatchNorm3d, x: torch.Tensor,
                       residual: torch.Tensor | None = None) -> torch.Tensor:
        """``self(relu(bn(x)))`` with the BatchNorm and ReLU applied in the kernel's packing of
        its input (``scale``, ``shift`` per channel): no activated copy of ``x`` is written or
        read. Plus ``residual`` where given, added as each output row is written, not in a pass
        of its own. Only where ``folds(bn, x)``."""
        scale, shift = eval_affine(bn)
        with torch.profiler.record_function(PROFILED_AS):
            return forward_cl(x, self._packed(x), self.out_channels // self.groups, self.stride,
                              scale, shift, residual)

    def _on_kernel(self, x: torch.Tensor) -> bool:
        if traced():
            return False
        kt = self.kernel_size[0]
        common = (x.device.type == "cpu" and x.dtype == self.weight.dtype and self.bias is None
                  and self.kernel_size[1:] == (3, 3) and kt in (1, 3)
                  and self.padding == (kt // 2, 1, 1) and self.dilation == (1, 1, 1)
                  and self.padding_mode == "zeros" and not torch.is_autocast_enabled("cpu"))
        if not common or extension() is None:
            return False
        if channels_last(x, self.stride):
            return x.dtype == torch.float32 and path() in CL_PATHS
        return (x.is_contiguous() and x.dtype in (torch.float32, torch.float64)
                and self.stride == (1, 1, 1))


def reference(x: torch.Tensor, weight: torch.Tensor, groups: int, stride=(1, 1, 1)) -> torch.Tensor:
    """PyTorch's own conv for the same arguments, what the kernel is tested against."""
    return F.conv3d(x, weight, stride=stride, padding=(weight.shape[2] // 2, 1, 1), groups=groups)


def use_kernel(model: nn.Module) -> int:
    """Put every grouped (1 or 3, 3, 3) ``Conv3d`` of ``model`` with same padding and no bias on
    the suite's kernel, in place; how many. The modules become ``FiberConv3d`` (a subclass with
    no state of its own): the parameters and checkpoint keys stay as they are, and a conv the
    kernel cannot run at a given call still runs as a plain ``Conv3d``. A model defined outside
    the repository gets it the same way as MF-Net.

    A model with fiber convs also gets BatchNorm + ReLU in one pass (``fuse_bn_relu``: every
    ``BatchNorm3d`` followed by a ``ReLU`` in an ``nn.Sequential``). A model without them
    (Res3D, I3D) is left wholly on PyTorch's kernels, so beside MF-Net it is a control."""
    count = 0
    for module in model.modules():
        if (type(module) is nn.Conv3d and module.groups > 1 and module.bias is None
                and module.kernel_size[1:] == (3, 3) and module.kernel_size[0] in (1, 3)
                and module.padding == (module.kernel_size[0] // 2, 1, 1)):
            module.__class__ = FiberConv3d
            count += 1
    if count or any(isinstance(m, FiberConv3d) for m in model.modules()):
        from models.bn_relu import fuse_bn_relu

        fuse_bn_relu(model)
    return count


def use_stock(model: nn.Module) -> int:
    """Undo ``use_kernel``, in place: every ``FiberConv3d`` a plain ``Conv3d`` and every fused
    BatchNorm + ReLU the two modules again; how many convs. MF-Net as footnote 5 found it, the
    harness's stock condition (``run.py --fiber-kernel stock``)."""
    count = 0
    for module in model.modules():
        if type(module) is FiberConv3d:
            module.__class__ = nn.Conv3d
            module.__dict__.pop(PACKED, None)
            count += 1
    from models.bn_relu import unfuse_bn_relu

    unfuse_bn_relu(model)
    return count


def use_kernels(model: nn.Module, suite: bool) -> int:
    """``use_kernel(model)`` where ``suite``, else ``use_stock(model)``: a run's kernels condition."""
    return use_kernel(model) if suite else use_stock(model)
