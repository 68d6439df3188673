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
import queue as queue_module
import re
import resource
from pathlib import Path

import torch

import models
from benchmarks.measure.cost import input_shape
from benchmarks.measure.workload import Setup, Workload
from benchmarks.store import Measurement

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
        queue.put(("ok", ((after - before) * 1024 / MB, after * 1024 / MB)))
    except Exception as exc:  # reported to the parent as an error row
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


# The largest peak RSS of any probe child this process started (MB): the job's memory is the
# parent's own peak and this, for the run's record.
largest_child_mb = 0.0


def cpu_peak_rss_growth(name: str, setup: Setup, clip, batch: int, timeout_s: float = 900) -> float:
    """MB by which one training step raises the peak RSS of a fresh process. A child that dies
    without answering (the OOM killer, a signal) is an error at once, not after the timeout."""
    global largest_child_mb
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rss_child, args=(name, setup, clip, batch, queue))
    process.start()
    try:
        status, value = _answer(process, queue, timeout_s)
    finally:
        process.join(timeout=30)
    if status != "ok":
        raise RuntimeError(value)
    growth, peak = value
    largest_child_mb = max(largest_child_mb, peak)
    return growth


def _answer(process, queue, timeout_s: float, poll_s: float = 0.5) -> tuple[str, object]:
    """The child's answer, polling so that its death is noticed within ``poll_s``."""
    waited = 0.0
    while waited < timeout_s:
        try:
            return queue.get(timeout=poll_s)
        except queue_module.Empty:
            waited += poll_s
        if not process.is_alive():
            try:  # it may have answered just before exiting
                return queue.get(timeout=poll_s)
            except queue_module.Empty:
                code = process.exitcode
                how = (f"killed by signal {-code}" + (" (SIGKILL: out of memory?)" if code == -9 else "")
                       if code is not None and code < 0 else f"exited with status {code}")
                return "error", f"the RSS probe process died without an answer: {how}"
    process.kill()
    return "error", f"the RSS probe process gave no answer in {timeout_s:.0f} s"


def measure_memory(name: str, setup: Setup, clip, clip_label: str, batch: int,
                   quick: bool = False, rss_probe: bool = True) -> list[Measurement]:
    rows = [Measurement(name, "memory", "activation_mb",
                        activation_bytes(name, clip, setup.dtype) / MB, "MB", "train", 1,
                        clip_label, note="saved for backward, per clip, meta device")]
    if setup.device == "cuda":
        workload = Workload(name, setup, clip)
        for metric, value in cuda_peaks(workload, batch, repeats=1 if quick else 3).items():
            phase = metric.rsplit("_", 1)[1]
            rows.append(Measurement(name, "memory", metric, value, "MB", phase, batch, clip_label))
    elif rss_probe and not quick:  # a process start and a step: not in --quick
        rows.append(Measurement(name, "memory", "peak_rss_mb_train",
                                cpu_peak_rss_growth(name, setup, clip, batch), "MB", "train",
                                batch, clip_label, note="peak RSS growth over one step, fresh process"))
    return rows


# ---- the memory guard: will a measurement fit in the memory this machine has left? ----

# Peak RSS growth over one CPU training step, in this suite's results (every model, batch 4),
# was 0.6-1.22x the counted need (activations saved for backward x batch + weights' gradients
# and momentum): 0.91-0.98x for the models above 1 GB, the higher ratios on small models where
# the runtime's own buffers dominate. A timing runs several steps, and the heap grows past the
# first: MF-Net at batch 4 grew 2.40 GB in its first step and 2.62 GB after three; I3D's timing
# in the sweep's process reached 7,993 MB resident in an 8 GB cgroup, about 7.1 GB of growth
# against its 5.3 GB counted need (5.2 GB for one step in a fresh process). The margin covers
# the timed loop; the allowance covers small models.
ESTIMATE_MARGIN = 1.4
ESTIMATE_FIXED = 256 * MB
CHILD_BASELINE = 512 * MB  # a fresh process with torch and the model imported
PHASE_NAMES = {"train": "a training", "infer": "an inference"}


class MemoryShort(RuntimeError):
    """A measurement would need more memory than is available: skipped, not killed."""


def largest_output_bytes(name: str, clip=None) -> int:
    """Bytes per clip of the largest tensor a module of ``name`` outputs (meta device): an
    inference step holds about a module's input and output, and a residual's identity."""
    with torch.device("meta"):
        model = models.create_model(name).eval()
        x = torch.empty(input_shape(name, clip, batch=1))
    largest = x.numel() * x.element_size()

    def hook(_module, _inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return largest


def estimate_bytes(name: str, clip, batch: int, phase: str, dtype: str = "fp32") -> int:
    """The peak memory a CPU step of ``name`` at ``batch`` adds, from counted sizes: training,
    activations saved for backward + weights, gradients and momentum; inference, three of
    its largest tensors (input, output, a residual) + weights."""
    with torch.device("meta"):
        params = sum(p.numel() for p in models.create_model(name).parameters()) * 4
    if phase == "train":
        need = activation_bytes(name, clip, dtype) * batch + 3 * params
    else:
        need = 3 * largest_output_bytes(name, clip) * batch + params
    return int(ESTIMATE_MARGIN * need + ESTIMATE_FIXED)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> tuple[int, str] | None:
    """(bytes left, cgroup path) under the tightest memory limit of this process's cgroups, v1
    or v2. File-backed page cache counts as free, as the kernel's MemAvailable counts it: it
    is reclaimed before anything is killed (a fresh clone's 6 GB venv, just installed, left
    3.5 GB of an 8 GB cgroup "used" by cache)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    tightest = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base, files = Path("/sys/fs/cgroup"), CGROUP_V2
        elif "memory" in controllers.split(","):  # v1
            base, files = Path("/sys/fs/cgroup/memory"), CGROUP_V1
        else:
            continue
        folder = base / path.lstrip("/")
        while True:  # a limit may be set on any ancestor
            room = _room(folder, *files)
            if room is not None and (tightest is None or room < tightest[0]):
                tightest = (room, str(folder))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return tightest


# (limit, usage, stat file, the stat keys of reclaimable file cache) of cgroup v2 and v1
CGROUP_V2 = ("memory.max", "memory.current", "memory.stat", ("active_file", "inactive_file"))
CGROUP_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
             ("total_active_file", "total_inactive_file"))


def _room(folder: Path, limit: str, usage: str, stat: str, cache_keys: tuple[str, ...]) -> int | None:
    try:
        text = (folder / limit).read_text().strip()
        if text == "max" or int(text) >= 2**60:  # no limit ("max", or v1's near-2^63)
            return None
        used = int((folder / usage).read_text())
        cache = 0
        for line in (folder / stat).read_text().splitlines():
            key, value = line.split()
            if key in cache_keys:
                cache += int(value)
        return int(text) - used + cache
    except (OSError, ValueError):
        return None


def _address_space_room() -> tuple[int, str] | None:
    """(bytes left, what) under this process's address-space limit (``prlimit --as``,
    ``ulimit -v``): the limit less the address space it maps already (``VmSize``), or None where
    there is no limit. PyTorch maps far more address space than it touches (one CUDA build
    mapped several GB on import), so under such a limit this, not the RAM, runs out first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        mapped = int(re.search(r"^VmSize:\s+(\d+) kB", status, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return None
    return max(soft - mapped, 0), f"the address-space limit of {soft / 2**30:.1f} GB, ulimit -v"


def available_bytes() -> tuple[int | None, str]:
    """(bytes this process may still allocate, where that figure comes from): the smallest of
    the kernel's MemAvailable, the room under a memory cgroup's limit (a container, a
    ``systemd-run -p MemoryMax=`` unit) and under the process's address-space limit; (None, why)
    where none can be read."""
    options = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        options.append((meminfo, "MemAvailable"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        options.append((cgroup[0], f"the memory cgroup {cgroup[1]}"))
    limit = _address_space_room()
    if limit is not None:
        options.append(limit)
    if not options:
        return None, "no /proc/meminfo or memory cgroup to read"
    return min(options)


def shortfall(name: str, clip, batch: int, phase: str, dtype: str = "fp32",
              fresh_process: bool = False) -> str:
    """Why a CPU step of ``name`` would not fit in the memory available, naming both figures;
    "" if it is estimated to fit (``fresh_process``: in a child, which starts torch anew)."""
    need = estimate_bytes(name, clip, batch, phase, dtype) + (CHILD_BASELINE if fresh_process else 0)
    room, source = available_bytes()
    if room is None or need <= room:
        return ""
    return (f"{PHASE_NAMES[phase]} step at batch {batch} needs about {need / 2**30:.1f} GB "
            f"(estimated), but {room / 2**30:.1f} GB is available ({source})")
