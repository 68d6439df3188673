"""Each model's path: the layout (NCDHW or channels-last) and, where the suite's kernels apply
to it, the kernels (the suite's or PyTorch's), whichever its inference step runs fastest here.

The same rule for every model, so a run's tables set each model's best path against the
others'. The suite's kernels swap in for any grouped (1 or 3)x3x3 conv, which suits MF-Net's
fibers but not every grouped conv: on a 2-core Intel Xeon with AMX at batch 4, channels-last,
X3D-M's depthwise convs ran 1114-1118 ms on them against 718-762 ms on oneDNN's, and ResNeXt's
32-group convs 378-384 ms against 362-365 ms, while MF-Net's ran 1.4x faster. In layout, X3D-M
ran 1.8x faster channels-last (757 against 1374 ms, stock), MF-Net 1.15x (its kernels run
channels-last inside, so an NCDHW input costs a conversion), and Res3D about the same.

The probe times one inference step of each candidate at the run's throughput batch, in turn
(``time_interleaved``: a warm-up call each, then at least two timed calls each) so a machine
that drifts moves all alike. It keeps the baseline, the run's kernels in NCDHW, unless another
candidate is faster by ``MARGIN`` (closer than that is within a probe's noise), and then takes
the fastest. The medians are stored as rows (``layout_ncdhw_ms``, ``layout_channels_last_ms``,
phase ``probe``, each under its kernels), and a later run on the same machine, dtype and input
reads its choice from them rather than probing again."""

import dataclasses
import functools

import pandas as pd
import torch

import models
from benchmarks.measure.timing import time_interleaved
from benchmarks.measure.workload import Setup, Workload
from benchmarks.store import Measurement
from models import kernels

MARGIN = 0.05
METRICS = {False: "layout_ncdhw_ms", True: "layout_channels_last_ms"}


@functools.cache
def kernels_apply(name: str) -> bool:
    """Whether the suite's kernels change ``name`` at all (a model without grouped 3x3x3 convs
    runs PyTorch's under either condition), counted on the meta device."""
    with torch.device("meta"):
        return kernels.applies(models.create_model(name))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path chosen: ``suite`` kernels or not, ``channels_last`` or not; ``times``: each
    candidate's median ms by (suite, channels_last)."""

    suite: bool
    channels_last: bool
    times: dict

    @property
    def kernels(self) -> str:
        return "suite" if self.suite else "stock"

    def describe(self) -> str:
        def name(suite, cl):
            return ("channels-last" if cl else "NCDHW") + (", suite kernels" if suite else "")

        tried = ", ".join(f"{name(*key)} {ms:.0f} ms" for key, ms in self.times.items())
        return f"{name(self.suite, self.channels_last)} (probe: {tried} per inference step)"


def choose(times: dict, baseline: tuple[bool, bool]) -> Choice:
    """The rule: the fastest candidate where it beats ``baseline`` by ``MARGIN``, else the
    baseline."""
    fastest = min(times, key=times.get)
    pick = fastest if times[fastest] < (1 - MARGIN) * times[baseline] else baseline
    return Choice(*pick, dict(times))


def probe(name: str, setup: Setup, clip, batch: int, min_run_time: float, kernels: tuple[bool, ...],
          min_steps: int = 2) -> tuple[Choice, list[Measurement]]:
    """Time ``name``'s inference step on each of ``kernels`` (suite or not; the first is the
    run's) in both layouts under ``setup`` (its device and dtype; always eager); the choice and
    its rows."""
    candidates = [(suite, cl) for suite in kernels for cl in (False, True)]
    workloads = [Workload(name, dataclasses.replace(setup, channels_last=cl, compiled=False, fiber_kernel=suite),
                          clip) for suite, cl in candidates]
    x, _ = workloads[0].inputs(batch)
    inputs = [x.contiguous(memory_format=w.memory_format) if cl else x for w, (_, cl) in zip(workloads, candidates)]
    results = time_interleaved([lambda w=w, x=x: w.infer_step(x) for w, x in zip(workloads, inputs)],
                               workloads[0].synchronize, min_run_time, min_steps)
    choice = choose({c: r[0] * 1e3 for c, r in zip(candidates, results)}, (kernels[0], False))
    label = "x".join(str(v) for v in x.shape[2:])
    rows = [Measurement(name, "speed", METRICS[cl], median * 1e3, "ms", "probe", batch, label, iqr=iqr * 1e3,
                        repeats=calls, channels_last=cl, kernels="suite" if suite else "stock",
                        note=f"path probe: chose {choice.describe()}")
            for (suite, cl), (median, iqr, calls) in zip(candidates, results)]
    return choice, rows


def recorded(frame: pd.DataFrame, name: str, clip_label: str, batch: int, kernels: tuple[bool, ...]) -> Choice | None:
    """The choice a probe stored in ``frame`` (rows already filtered to the run's machine and
    dtype) over the same candidates, from the newest of each; None where any is missing."""
    mine = frame[(frame["model"] == name) & (frame["phase"] == "probe") & (frame["clip"] == clip_label)
                 & (frame["batch_size"] == batch) & (frame["status"] == "ok")]
    times = {}
    for suite in kernels:
        for cl, metric in METRICS.items():
            rows = mine[(mine["metric"] == metric) & (mine["kernels"] == ("suite" if suite else "stock"))]
            if rows.empty or pd.isna(rows["value"].iloc[-1]):
                return None
            times[(suite, cl)] = float(rows["value"].iloc[-1])
    return choose(times, (kernels[0], False))
