"""Speed: latency, throughput and training throughput, and how far they fall from the peak.

Timing uses ``torch.utils.benchmark.Timer.blocked_autorange``: warm-up first, repeated blocks,
the median and the interquartile range of the per-step times. On CUDA every step ends with
``torch.cuda.synchronize()`` so the clock sees the kernels. Inference runs under
``inference_mode``. A ratio IQR/median above ``NOISY`` gets a warning in the row's note.

Achieved GMAC/s = multiply-adds of the step / median step time. A training step is counted
as 3x the forward multiply-adds (backward ~ 2x forward: gradients of inputs and of weights), a
convention, because FlopCounterMode over-counts the backward of grouped convolutions (it
reports 7.96 G for MF-Net 2D's conv backward, ~9x its 0.86 G forward). ``peak_fraction``
divides by the machine's peak in the same dtype (the faster of a dense matmul and a dense
conv, see ``peak_gmacs_per_s``), measured at the start of each run.
"""

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import benchmark as tbench

from benchmarks import runtime
from benchmarks.results import Measurement
from benchmarks.workload import DTYPES, Workload

NOISY = 0.1  # IQR/median above this is flagged
TRAIN_MACS_FACTOR = 3


def time_step(step: Callable[[], None], synchronize: Callable[[], None], min_run_time: float,
              warmup: int = 1) -> tbench.Measurement:
    """One step: ``warmup`` calls, then ``blocked_autorange`` for ``min_run_time``."""
    return time_alternating([step], synchronize, min_run_time, warmup, rounds=1)[0]


def peak_problem(device: str) -> tuple[int, tuple[int, ...]]:
    """(matmul side, dense conv input) large enough to reach the device's peak. On the CPU a
    2048^3 matmul (8.6 GMAC) and a 128 -> 128 3x3x3 conv on (2, 128, 8, 28, 28) (5.5 GMAC)
    saturate two to 64 cores; a GPU's tensor cores need an 8192^3 matmul (550 GMAC) and a
    16x larger conv input to stay busy long enough per call."""
    if device == "cuda":
        return 8192, (8, 128, 16, 56, 56)
    return 2048, (2, 128, 8, 28, 28)


# One peak call may take this long at most. Half precision on a CPU without native support
# runs reference kernels: a 2048^3 fp16 matmul took 64 s a call on one EPYC, and bf16 ran at
# under 1 GMAC/s on an AVX2 one. The problem then shrinks until a call fits, and says so.
PEAK_CALL_S = 0.5
MATMUL_SIDES = (2048, 1024, 512, 256, 128)
CONV_INPUTS = ((2, 128, 8, 28, 28), (1, 128, 8, 28, 28), (1, 128, 4, 28, 28), (1, 128, 2, 28, 28),
               (1, 128, 1, 28, 28), (1, 128, 1, 14, 14))


def _conv_macs(shape: tuple[int, ...]) -> int:
    return math.prod(shape) * 128 * 27  # 128 output channels, 3x3x3, padded to the same size


def fitted_problem(device: str, dtype: str) -> tuple[int, tuple[int, ...], str]:
    """``peak_problem``, shrunk on a CPU until one call of each is predicted (from a timed call
    of the smallest size, scaled by the multiply-adds) to take at most ``PEAK_CALL_S``; and a
    note saying so when it was shrunk."""
    n, conv_input = peak_problem(device)
    if device == "cuda":  # every dtype has tensor-core kernels; a first call times set-up
        return n, conv_input, ""
    torch_dtype = DTYPES[dtype]
    a = torch.randn(MATMUL_SIDES[-1], MATMUL_SIDES[-1], dtype=torch_dtype)
    conv = nn.Conv3d(128, 128, 3, padding=1, bias=False).to(torch_dtype).eval()
    x = torch.randn(CONV_INPUTS[-1], dtype=torch_dtype)
    with torch.inference_mode():
        torch.mm(a, a), conv(x)  # lazy initialisation out of the timed call
        started = time.perf_counter()
        torch.mm(a, a)
        per_mac_mm = (time.perf_counter() - started) / MATMUL_SIDES[-1] ** 3
        started = time.perf_counter()
        conv(x)
        per_mac_conv = (time.perf_counter() - started) / _conv_macs(CONV_INPUTS[-1])
    side = next((s for s in MATMUL_SIDES if per_mac_mm * s**3 <= PEAK_CALL_S), MATMUL_SIDES[-1])
    shape = next((s for s in CONV_INPUTS if per_mac_conv * _conv_macs(s) <= PEAK_CALL_S),
                 CONV_INPUTS[-1])
    if (side, shape) == (n, conv_input):
        return n, conv_input, ""
    return side, shape, (f"shrunk to a {side}^3 matmul and a {'x'.join(map(str, shape))} conv "
                         f"input: a full-size {dtype} call would take "
                         f"{max(per_mac_mm * n**3, per_mac_conv * _conv_macs(conv_input)):.0f} s here")


def peak_gmacs_per_s(device: str, dtype: str, min_run_time: float = 1.0,
                     warm_s: float = 1.0) -> dict[str, float]:
    """The machine's dense rates in ``dtype``: a large matmul and a dense 3x3x3 conv
    (``peak_problem``, shrunk by ``fitted_problem`` where one call would take too long;
    ``peak_with_note`` also says whether it was).

    The roofline every model is compared with is the faster of the two. A matmul alone is not
    enough: on this suite's AMD EPYC CPU, MKL's sgemm takes its AVX2 path (~110 GMAC/s on two
    cores) while oneDNN's convolutions use AVX-512 (~255 GMAC/s), so dense 3D CNNs read 200%
    of a matmul "peak". A peak is the best the machine sustains, so each takes the fastest
    timed block after a warm-up (``warm_s``; a cold median read 25% low here). A brief check
    around one model's timing passes a shorter ``warm_s`` and ``min_run_time``."""
    return peak_with_note(device, dtype, min_run_time, warm_s)[0]


def peak_with_note(device: str, dtype: str, min_run_time: float = 1.0,
                   warm_s: float = 1.0) -> tuple[dict[str, float], str]:
    """``peak_gmacs_per_s`` and the note of ``fitted_problem`` ("" at full size)."""
    torch_dtype = DTYPES[dtype]
    n, conv_input, note = fitted_problem(device, dtype)
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    conv = nn.Conv3d(128, 128, 3, padding=1, bias=False).to(device, torch_dtype).eval()
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = torch.randn(*conv_input, device=device, dtype=torch_dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = {}
    with torch.inference_mode():
        for kind, step, macs in (("matmul", lambda: torch.mm(a, b), n**3),
                                 ("conv", lambda: conv(x), _conv_macs(conv_input))):
            warm_until = time.perf_counter() + warm_s
            while time.perf_counter() < warm_until:
                step()
            result = time_step(step, sync, min_run_time, warmup=1)
            rates[kind] = macs / min(result.times) / 1e9
    return rates, note


def _rows(name, phase, batch, clip_label, result, macs_per_clip, peak, metric, value, unit):
    clips_per_s = batch / result.median
    iqr_ratio = result.iqr / result.median
    note = f"noisy: IQR/median {iqr_ratio:.0%}" if iqr_ratio > NOISY else ""
    spread = result.iqr / result.median * value  # IQR carried into the metric's unit
    factor = TRAIN_MACS_FACTOR if phase == "train" else 1
    gmacs_per_s = macs_per_clip * factor * clips_per_s / 1e9
    common = dict(phase=phase, batch_size=batch, clip=clip_label, repeats=len(result.times))
    return [
        Measurement(name, "speed", metric, value, unit, iqr=spread, note=note, **common),
        Measurement(name, "speed", "gmacs_per_s", gmacs_per_s, "GMAC/s", note=note, **common),
        Measurement(name, "speed", "peak_fraction", gmacs_per_s / peak, "ratio",
                    note=f"peak {peak:.1f} GMAC/s", **common),
    ]


def time_alternating(steps: list[Callable[[], None]], synchronize: Callable[[], None],
                     min_run_time: float, warmup: int = 1, rounds: int = 3) -> list[tbench.Measurement]:
    """Several steps timed against each other: ``rounds`` rounds, each timing every step in turn
    for ``min_run_time``, merged per step. A machine that speeds up or slows down
    mid-measurement (shared and virtual machines drift by tens of percent within minutes) then
    moves every step alike, which timing one after the other does not. Each step gets
    ``rounds`` x ``min_run_time`` in all: with a third each, MF-Net's 0.3 s batch-1 step was
    timed once or twice a round, and three paired runs read its ratio as 0.90, 1.20 and 0.96."""
    for step in steps:
        for _ in range(warmup):
            step()
    synchronize()
    timers = []
    for step in steps:
        def timed(step=step):
            step()
            synchronize()

        timers.append(tbench.Timer(stmt="timed()", globals={"timed": timed},
                                   num_threads=torch.get_num_threads()))
    blocks: list[list[tbench.Measurement]] = [[] for _ in steps]
    for _ in range(rounds):
        for timer, mine in zip(timers, blocks):
            mine.append(timer.blocked_autorange(min_run_time=min_run_time))
    return [tbench.Measurement.merge(mine)[0] for mine in blocks]


def measure_speed(workloads: list[Workload], clip_label: str, batch: int, macs_per_clip: int,
                  peak: float, min_run_time: float, warmup: int = 1,
                  train: bool = True) -> list[list[Measurement]]:
    """Latency, inference and (``train``) training throughput of each workload (the same model
    under different conditions), rows per workload. One workload is timed as ``time_step``
    times; several are timed against each other in alternating rounds (``time_alternating``),
    each phase in turn. ``warmup=0`` (``--quick``) leaves the warm-up to
    ``blocked_autorange``'s block-size estimate, which runs the step before timing it: a step
    of I3D at 64x224x224 takes seconds, so each warm-up step costs that much again."""
    sync = workloads[0].synchronize
    rows: list[list[Measurement]] = [[] for _ in workloads]

    def timed(steps):
        return time_alternating(steps, sync, min_run_time, warmup, rounds=1 if len(steps) == 1 else 3)

    def add(phase, b, metric, unit, value_of, results):
        for mine, workload, result in zip(rows, workloads, results):
            mine += _rows(workload.name, phase, b, clip_label, result, macs_per_clip, peak,
                          metric, value_of(result), unit)

    x1, _ = workloads[0].inputs(1)
    results = timed([lambda w=w: w.infer_step(x1) for w in workloads])
    add("infer", 1, "latency_ms", "ms", lambda r: r.median * 1e3, results)
    x, y = workloads[0].inputs(batch)
    results = timed([lambda w=w: w.infer_step(x) for w in workloads])
    add("infer", batch, "infer_clips_per_s", "clips/s", lambda r: batch / r.median, results)
    if not train:
        return rows
    x1 = results = None  # the batch-1 input and its timers go before training allocates
    # between the timings, never inside one: in an 8 GB cgroup, I3D's training step on top of
    # the heap its inference left grew the process to 7.75 GB, against 5.2 GB in a fresh one
    runtime.give_back_memory()
    train_steps = [w.make_train_step() for w in workloads]
    results = timed([lambda t=t: t(x, y) for t in train_steps])
    add("train", batch, "train_clips_per_s", "clips/s", lambda r: batch / r.median, results)
    return rows
