"""Each model's layout: NCDHW or channels-last, whichever its inference step runs faster here.

The same rule for every model, so a run's tables set each model's best path against the
others'. On a 2-core Intel Xeon with AMX at batch 4, the probe found X3D-M's inference 1.12x
faster channels-last (1151 against 1289 ms; 1.8x has been measured for it on another Xeon),
MF-Net's on the suite's kernels 1.15x (they run channels-last inside, so an NCDHW input costs a
conversion), and Res3D's 0.93x, so Res3D kept NCDHW. The probe times one inference step in each
layout at the run's throughput batch, the two in turn (``time_interleaved``: a warm-up call
each, then at least two timed calls each) so a machine that drifts moves both alike, and keeps
NCDHW unless channels-last is faster by ``MARGIN``: closer than that is within a probe's noise,
and NCDHW is every model's own default. The two medians are stored as rows
(``layout_ncdhw_ms``, ``layout_channels_last_ms``, phase ``probe``), and a later run on the same
machine, dtype, kernels and input reads its choice from them rather than probing again."""

import dataclasses

import pandas as pd

from benchmarks.measure.timing import time_interleaved
from benchmarks.measure.workload import Setup, Workload
from benchmarks.store import Measurement

MARGIN = 0.05
METRICS = {False: "layout_ncdhw_ms", True: "layout_channels_last_ms"}


@dataclasses.dataclass(frozen=True)
class Choice:
    channels_last: bool
    ncdhw_ms: float
    channels_last_ms: float

    @property
    def name(self) -> str:
        return "channels-last" if self.channels_last else "NCDHW"

    def describe(self) -> str:
        return (f"{self.name} (probe: NCDHW {self.ncdhw_ms:.0f} ms, channels-last "
                f"{self.channels_last_ms:.0f} ms per inference step)")


def choose(ncdhw_ms: float, channels_last_ms: float) -> Choice:
    """The rule: channels-last where it is at least ``MARGIN`` faster, else NCDHW."""
    return Choice(channels_last_ms < (1 - MARGIN) * ncdhw_ms, ncdhw_ms, channels_last_ms)


def probe(name: str, setup: Setup, clip, batch: int, min_run_time: float,
          min_steps: int = 2) -> tuple[Choice, list[Measurement]]:
    """Time ``name``'s inference step in both layouts under ``setup`` (its device, dtype and
    kernels; always eager); the choice and its rows."""
    workloads = [Workload(name, dataclasses.replace(setup, channels_last=cl, compiled=False), clip)
                 for cl in (False, True)]
    x, _ = workloads[0].inputs(batch)
    inputs = [x, x.contiguous(memory_format=workloads[1].memory_format)]
    results = time_interleaved([lambda w=w, x=x: w.infer_step(x) for w, x in zip(workloads, inputs)],
                               workloads[0].synchronize, min_run_time, min_steps)
    choice = choose(results[0][0] * 1e3, results[1][0] * 1e3)
    label = "x".join(str(v) for v in x.shape[2:])
    rows = [Measurement(name, "speed", METRICS[channels_last], median * 1e3, "ms", "probe", batch, label,
                        iqr=iqr * 1e3, repeats=calls, channels_last=channels_last,
                        note=f"layout probe: chose {choice.name}")
            for channels_last, (median, iqr, calls) in zip((False, True), results)]
    return choice, rows


def recorded(frame: pd.DataFrame, name: str, clip_label: str, batch: int) -> Choice | None:
    """The choice a probe stored in ``frame`` (rows already filtered to the run's machine, dtype
    and kernels), the newest; None where none was."""
    mine = frame[(frame["model"] == name) & (frame["phase"] == "probe") & (frame["clip"] == clip_label)
                 & (frame["batch_size"] == batch) & (frame["status"] == "ok")]
    values = {}
    for channels_last, metric in METRICS.items():
        rows = mine[mine["metric"] == metric]
        if rows.empty or pd.isna(rows["value"].iloc[-1]):
            return None
        values[channels_last] = float(rows["value"].iloc[-1])
    return choose(values[False], values[True])
