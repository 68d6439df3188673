"""Where a run happened: recorded once per run in ``results/runs/<run_id>.json``, so every
number can be traced to its machine, software and commit (as torchbench's ``environ``)."""

import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the instruction sets that decide a CPU's speed here: AVX2 + FMA (the kernels' AVX2 path), AVX-512F
# (oneDNN's and the kernels' AVX-512 paths), AVX512-BF16 and AMX (native bf16), AVX512-FP16 and
# AMX-FP16 (native fp16)
CPU_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_bf16": "AVX512-BF16",
             "amx_bf16": "AMX-BF16", "amx_tile": "AMX", "avx512_fp16": "AVX512-FP16", "amx_fp16": "AMX-FP16"}


def cpu_flags() -> list[str]:
    """Which of ``CPU_FLAGS`` this CPU has, by their usual names (``/proc/cpuinfo``; [] elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [name for flag, name in CPU_FLAGS.items() if flag in have]
    except OSError:
        pass
    return []


def cpu_capability() -> str:
    """The vector instruction set PyTorch's CPU kernels dispatch to (e.g. AVX2, AVX512)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def device_name(device: str) -> str:
    """The device as results name it. A CPU's name is followed by the instruction set its
    kernels use: cloud VMs call very different hosts just "AMD EPYC", and one with AVX-512 ran
    this suite's dense convs 2.6x faster than one with AVX2 only (271 against 105 GMAC/s on two
    cores), so their timings are not the same machine's. Rows written before this was recorded
    carry the bare name."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({cpu_capability()})"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        # the stores and the report a run writes into are not the code that measured
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)reports"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def collect(device: str) -> dict:
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        # the cores this process may run on (a container or taskset may allow fewer than it has)
        "cpu_cores_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "fiber_kernel": kernels_status(),
    }


def kernels_status() -> str:
    """What MF-Net's convs ran on in this process (``models/kernels``); it does not build the
    kernels."""
    from models import kernels

    return kernels.status(load=False)
