"""Memory: activations saved for backward (any device), CUDA peaks, CPU peak RSS.

- ``activation_mb``: bytes per clip of the tensors autograd saves for backward in one training
  forward pass, counted with ``torch.autograd.graph.saved_tensors_hooks`` on the meta
  device (no real compute; the same number on any hardware). Parameters that ops save (conv
  weights) are not activations and are left out; a tensor saved by two ops counts once.
- CUDA: ``peak_alloc_mb_*`` / ``peak_reserved_mb_*`` from ``max_memory_allocated`` /
  ``max_memory_reserved`` after ``reset_peak_memory_stats``, in a loop of their own.
- CPU: ``peak_rss_mb_train``, growth of the peak resident set (``VmHWM``) over one training
  step, in a fresh process so nothing measured before skews it. Not ``ru_maxrss``: Linux
  carries it across fork and exec, so a child of a 6 GB parent starts at 6 GB and a 1.5 GB
  step reads as 0 (it did, for R(2+1)D, in this suite's first reference run).
"""

import multiprocessing as mp
import resource

import torch

import models
from benchmarks.cost import input_shape
from benchmarks.results import Measurement
from benchmarks.workload import Setup, Workload

MB = 2**20


def activation_bytes(name: str, clip: tuple[int, ...] | None = None, dtype: str = "fp32") -> int:
    with torch.device("meta"):
        model = models.create_model(name).train()
        # batch 2, halved below: BatchNorm in training refuses one value per channel
        x = torch.empty(input_shape(name, clip, batch=2), dtype=torch.float32)
    params = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params:
            saved[id(t)] = t  # keeping a reference also keeps ids unique
        return t

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else
                torch.autocast("cpu", dtype=torch.float16) if dtype == "fp16" else None)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast is None:
            model(x)
        else:
            with autocast:
                model(x)
    return sum(t.numel() * t.element_size() for t in saved.values()) // 2


def cuda_peaks(workload: Workload, batch: int, repeats: int = 3) -> dict[str, float]:
    """Peak allocated / reserved MB of inference and training steps at ``batch``."""
    x, y = workload.inputs(batch)
    peaks = {}
    train_step = workload.make_train_step()
    steps = {"infer": lambda: workload.infer_step(x), "train": lambda: train_step(x, y)}
    for phase, step in steps.items():
        step()  # warm-up: lazy init and cuDNN autotuning allocate too
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
        peaks[f"peak_alloc_mb_{phase}"] = torch.cuda.max_memory_allocated() / MB
        peaks[f"peak_reserved_mb_{phase}"] = torch.cuda.max_memory_reserved() / MB
    return peaks


def peak_rss_kib() -> int:
    """This process's own peak resident set (VmHWM, per address space, fresh after exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: best effort


def _rss_child(name, setup, clip, batch, queue):
    try:
        workload = Workload(name, setup, clip)
        x, y = workload.inputs(batch)
        train_step = workload.make_train_step()
        before = peak_rss_kib()
        train_step(x, y)
        after = peak_rss_kib()
        queue.put(("ok", (after - before) * 1024 / MB))
    except Exception as exc:  # reported to the parent as an error row
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def cpu_peak_rss_growth(name: str, setup: Setup, clip, batch: int, timeout_s: float = 900) -> float:
    """MB by which one training step raises the peak RSS of a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rss_child, args=(name, setup, clip, batch, queue))
    process.start()
    try:
        status, value = queue.get(timeout=timeout_s)
    except Exception:
        process.kill()
        raise RuntimeError(f"the RSS probe process gave no answer in {timeout_s:.0f} s") from None
    finally:
        process.join(timeout=30)
    if status != "ok":
        raise RuntimeError(value)
    return value


def measure_memory(name: str, setup: Setup, clip, clip_label: str, batch: int,
                   quick: bool = False) -> list[Measurement]:
    rows = [Measurement(name, "memory", "activation_mb",
                        activation_bytes(name, clip, setup.dtype) / MB, "MB", "train", 1,
                        clip_label, note="saved for backward, per clip, meta device")]
    if setup.device == "cuda":
        workload = Workload(name, setup, clip)
        for metric, value in cuda_peaks(workload, batch, repeats=1 if quick else 3).items():
            phase = metric.rsplit("_", 1)[1]
            rows.append(Measurement(name, "memory", metric, value, "MB", phase, batch, clip_label))
    elif not quick:  # the fresh-process probe costs a process start and a step: not in --quick
        rows.append(Measurement(name, "memory", "peak_rss_mb_train",
                                cpu_peak_rss_growth(name, setup, clip, batch), "MB", "train",
                                batch, clip_label, note="peak RSS growth over one step, fresh process"))
    return rows
