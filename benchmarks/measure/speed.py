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

from benchmarks.machine import runtime
from benchmarks.measure.timing import time_alternating
from benchmarks.measure.workload import Workload
from benchmarks.store import Measurement

NOISY = 0.1  # IQR/median above this is flagged
TRAIN_MACS_FACTOR = 3


def _rows(name, phase, batch, clip_label, result, macs_per_clip, peak, metric, value, unit):
    clips_per_s = batch / result.median
    iqr_ratio = result.iqr / result.median
    note = f"noisy: IQR/median {iqr_ratio:.0%}" if iqr_ratio > NOISY else ""
    spread = result.iqr / result.median * value  # IQR carried into the metric's unit
    factor = TRAIN_MACS_FACTOR if phase == "train" else 1
    gmacs_per_s = macs_per_clip * factor * clips_per_s / 1e9
    common = dict(phase=phase, batch_size=batch, clip=clip_label, repeats=len(result.times))
    rows = [Measurement(name, "speed", metric, value, unit, iqr=spread, note=note, **common),
            Measurement(name, "speed", "gmacs_per_s", gmacs_per_s, "GMAC/s", note=note, **common)]
    if peak:  # none where the machine's peak could not be measured
        rows.append(Measurement(name, "speed", "peak_fraction", gmacs_per_s / peak, "ratio",
                                note=f"peak {peak:.1f} GMAC/s", **common))
    return rows


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
