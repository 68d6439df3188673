"""The bottom of the kernel library: build, verify and load the C++ extension (``csrc/``).

- Built on first use with ``torch.utils.cpp_extension.load`` (ninja, the system C++ compiler,
  OpenMP) and cached per machine in torch's extensions folder; about a minute the first time.
- A cached library no process of this suite has loaded yet is first loaded in a child process:
  a damaged one (a build killed while it linked) kills whatever loads it, so it is removed and
  built afresh instead.
- Where it cannot be built (no compiler, a failed build) ``extension()`` is None, the reason is
  kept for ``why()``, and every op runs PyTorch's own kernels after a one-line warning.
- ``MFNET_FIBER_KERNEL=off`` (``SWITCH``; its other values pick a path, ``paths.py``) never builds it.
- Loading it also puts a pool for large CPU blocks in front of PyTorch's allocator
  (``csrc/pool.cpp``; ``MFNET_LARGE_BLOCK_POOL``).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
NAME = "mfnet_kernels"
# every translation unit; the headers they include are listed in docs/kernels.md
SOURCES = [CSRC / f"{name}.cpp" for name in (
    "bindings", "isa", "fiber_ncdhw", "fiber_cl", "fiber_cl_avx512", "fiber_cl_emulated",
    "pointwise_cl", "bn_relu", "bf16", "bf16_avx512", "pool")]
SWITCH = "MFNET_FIBER_KERNEL"  # off | a path (paths.PATHS) | unset: the fastest this CPU has
# off | MiB kept at most | unset: a quarter of memory. Freed CPU blocks of 32 MiB and up kept
POOL_SWITCH = "MFNET_LARGE_BLOCK_POOL"
_loaded: dict = {}  # "module", "why", "pool"; paths.py keeps its choices here too


def build_dir() -> Path:
    """Where ``load`` builds and caches (``TORCH_EXTENSIONS_DIR``, torch's own layout)."""
    from torch.utils import cpp_extension

    try:
        return Path(cpp_extension._get_build_directory(NAME, False))
    except Exception:
        return Path(cpp_extension.get_default_build_root()) / NAME


def _loads_in_a_child(library: Path) -> bool:
    """Whether a fresh process can load ``library``; a damaged one dies with SIGBUS there."""
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
    """Before loading: a cached library whose digest is not in ``verified`` is first loaded in
    a child; one that fails there is removed with its build folder, so ``load`` builds afresh."""
    folder = build_dir()
    library, stamp = folder / f"{NAME}.so", folder / "verified"
    if not library.is_file():
        return
    if stamp.is_file() and stamp.read_text().split(" ")[0] == _digest(library):
        return
    if not _loads_in_a_child(library):
        warnings.warn(f"the cached kernel library in {folder} does not load; building it afresh",
                      stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)


def _sources_digest() -> str:
    """What a build is made of: every source and header, and the torch it links against."""
    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _stamp(library: Path) -> str:
    return f"{_digest(library)} {_sources_digest()}"


def _mark_verified() -> None:
    library = build_dir() / f"{NAME}.so"
    try:
        (library.parent / "verified").write_text(_stamp(library))
    except OSError:
        pass  # a read-only cache: the next process checks again, nothing worse


def _verified_current(folder: Path) -> Path | None:
    """The cached library where it loaded before and was built from these sources for this
    torch: it is imported as it is, with no build step (which needs a lock file in the folder,
    so a read-only cache could not be used)."""
    library, stamp = folder / f"{NAME}.so", folder / "verified"
    try:
        return library if library.is_file() and stamp.read_text() == _stamp(library) else None
    except OSError:
        return None


def _import(library: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_tools() -> None:
    """A one-line reason before a build that cannot start: torch's own is a long compiler
    banner, then "ninja: build stopped"."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler} is not on PATH (install one, or set CXX)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")


def build_failure(exc: Exception) -> str:
    """A failed build's cause in one line: the compiler's first error, not ninja's last words."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]  # the compiler's "file:line: error: ..."
    useful = [line for line in lines if not line.startswith(("ninja: ", "Error building extension", "["))]
    return (errors or useful or lines or [""])[0][:300]


def extension():
    """The compiled library, or None (the reason in ``why()``): built once per machine, loaded
    once per process."""
    if "module" in _loaded:
        return _loaded["module"]
    module, why = None, ""
    if os.environ.get(SWITCH, "").strip().lower() == "off":
        why = f"{SWITCH}=off"
    else:
        try:
            module = _load()
        except Exception as exc:  # no compiler, no ninja, a failed build: fall back, say why
            why = f"the kernel could not be built ({type(exc).__name__}: {build_failure(exc)})"
            warnings.warn(f"fiber convs run on PyTorch's own kernels: {why}", stacklevel=2)
    _loaded.update(module=module, why=why, pool=module is not None and _install_pool(module))
    return module


def _load():
    from torch.utils import cpp_extension

    check_cache()
    verified = _verified_current(build_dir())
    if verified is not None:
        return _import(verified)
    _check_tools()
    if not (build_dir() / f"{NAME}.so").is_file():
        print("building the suite's kernels, once per machine (about a minute)",
              file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CUDA runtime": these are CPU kernels
        # -fopenmp: at::parallel_for is a header template; built without it, the kernels run
        # on one thread whatever torch.get_num_threads() says. The library links libgomp.so.1,
        # the same soname torch already loaded.
        module = cpp_extension.load(NAME, [str(s) for s in SOURCES], extra_cflags=["-O3", "-fopenmp"],
                                    extra_ldflags=["-fopenmp"], verbose=False)
    _mark_verified()
    return module


def why() -> str:
    """Why ``extension()`` is None ("" where it loaded or was not asked for yet)."""
    return _loaded.get("why", "")


def loaded() -> bool:
    """Whether this process has asked for the library yet (without building it)."""
    return "module" in _loaded


def pooled() -> bool:
    return bool(_loaded.get("pool"))


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
