"""The one timing discipline of every measurement: warm-up, then ``torch.utils.benchmark``'s
``blocked_autorange`` (repeated blocks; the median and the interquartile range of the per-step
times), and several steps timed against each other in alternating rounds. On CUDA every step ends
with ``torch.cuda.synchronize()`` so the clock sees the kernels."""

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils import benchmark as tbench


def time_step(step: Callable[[], None], synchronize: Callable[[], None], min_run_time: float,
              warmup: int = 1) -> tbench.Measurement:
    """One step: ``warmup`` calls, then ``blocked_autorange`` for ``min_run_time``."""
    return time_alternating([step], synchronize, min_run_time, warmup, rounds=1)[0]


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


def time_interleaved(steps: list[Callable[[], None]], synchronize: Callable[[], None], min_run_time: float,
                     min_steps: int = 2) -> list[tuple[float, float, int]]:
    """A cheap comparison of several steps for a decision, not a figure: one warm-up call each,
    then one timed call of each in turn until each has ``min_steps`` calls and ``min_run_time``
    seconds; (median, IQR, calls) per step. ``blocked_autorange`` runs a step once more per round
    to size its blocks, which for a seconds-long step (I3D at batch 4) doubles a probe's cost."""
    for step in steps:
        step()
    synchronize()
    times: list[list[float]] = [[] for _ in steps]
    while min(len(t) for t in times) < min_steps or min(sum(t) for t in times) < min_run_time:
        for step, mine in zip(steps, times):
            start = time.perf_counter()
            step()
            synchronize()
            mine.append(time.perf_counter() - start)
    return [(statistics.median(t), _iqr(t), len(t)) for t in times]


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]
