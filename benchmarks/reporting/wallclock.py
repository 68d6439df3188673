"""Does MF-Net's wall-clock follow its FLOPs? Its achieved GMAC/s against a dense 3D CNN's, and
footnote 5's forecast judged from MF-Net on stock kernels and on the suite's, timed in one
process (paired runs), with the dense model timed twice as the run's own control."""

import pandas as pd

from benchmarks import runtimes
from benchmarks.machine import disturbance
from benchmarks.reporting.rows import spec_clip
from models import ledger

# Does MF-Net's wall-clock follow its FLOPs (footnote 5)? The dense model it is held against.
WALLCLOCK_PAIR = ledger.FOOTNOTE5_PAIR

WALLCLOCK_TARGET = 0.8  # MF-Net's achieved GMAC/s at least 0.8x the dense model's

# A paired run whose control (the dense model timed twice in the same rounds) moved further
# from 1x than this judges nothing: its machine moved a ratio by more than the verdict's margin
CONTROL_TOLERANCE = 0.10

def wallclock_section(rows: pd.DataFrame) -> list[str]:
    """MF-Net's achieved GMAC/s over Res3D's, both from the same run (the same process and
    machine state), for each setup (device, dtype, memory format, compile) measured: the
    newest run that timed both. ``rows``: every ok row."""
    mf, dense = WALLCLOCK_PAIR
    rates = rows[(rows["metric"] == "gmacs_per_s") & rows["model"].isin(WALLCLOCK_PAIR)]
    rates = rates[rates["clip"] == rates["model"].map(spec_clip)]
    lines = []
    for (device, name, dtype, layout, compiled, runtime, kernels), setup in rates.groupby(
            ["device", "device_name", "dtype", "layout", "compiled", "runtime", "kernels"], sort=True):
        per_run = setup.groupby("run_id")["model"].nunique()
        shared = per_run[per_run == 2].index
        if shared.empty:
            continue
        stamps = setup[setup["run_id"].isin(shared)].groupby("run_id")["timestamp"].max()
        run = stamps.idxmax()
        chosen = setup[setup["run_id"] == run].set_index(["model", "phase", "batch_size"])
        pick = chosen["value"]
        notes = chosen["note"].map(disturbance.is_disturbed)
        cells = []
        for phase, at_one in (("infer", True), ("infer", False), ("train", False)):
            batches = sorted({b for (m, p, b) in pick.index if m == mf and p == phase})
            batch = 1 if at_one else (batches[-1] if batches else None)
            a, d = pick.get((mf, phase, batch)), pick.get((dense, phase, batch))
            if a is None or d is None or (not at_one and batch == 1):
                cells.append("–")
                continue
            r = a / d
            mark = "✓" if r >= WALLCLOCK_TARGET else "✗"
            if notes.get((mf, phase, batch)) or notes.get((dense, phase, batch)):
                mark = "⚠ not judged: timed while the machine was shared"
            cells.append(f"{a:.0f} / {d:.0f} = **{r:.2f}×** {mark}" + ("" if at_one else f" (b={batch})"))
        label = setup_label(device, name, dtype, layout, compiled, runtime)
        if not runtimes.exported(runtime):  # an exported runtime brings its own kernels
            label += ", " + KERNELS_LABEL.get(kernels, f"kernels: {kernels}")
        lines.append(f"| {label} | {' | '.join(cells)} | {run} |")
    if not lines:
        return []
    forecast = forecast_lines(rates)
    return ["## Does MF-Net's wall-clock follow its FLOPs?", "",
            "The paper (footnote 5) says MF-Net's FLOP savings barely show in wall-clock time and "
            "blames unoptimised grouped convolutions. Here: MF-Net's achieved GMAC/s against the "
            f"dense `{dense}`'s, both from the same run, for each setup measured; the target is "
            f"{WALLCLOCK_TARGET}× (✓). MF-Net runs channels-last internally by default "
            "(`models/mfnet.py`), the fastest correct path found; the other models run in the "
            "setup's layout (*best layout*: each in its faster one).", "",
            "| setup | inference b=1: MF-Net / Res3D GMAC/s | inference, throughput batch | "
            "training step | run |", "|---|---|---|---|---|", *lines, "", LEGEND, "", *forecast]

LAYOUT_LABEL = {"best": ", best layout", "channels_last": ", channels-last", "ncdhw": ""}


def setup_label(device: str, name: str, dtype: str, layout: str, compiled: bool, runtime: str = "eager") -> str:
    """A setup in a few words (``LEGEND`` says what they mean)."""
    where = name if device == "cpu" else f"{name} ({device})"
    label = where + f", {dtype}" + LAYOUT_LABEL.get(layout, f", {layout}") + (", compiled" if compiled else "")
    return label + (f", {runtime}" if runtimes.exported(runtime) else "")


KERNELS_LABEL = {"stock": "stock", "suite": "suite kernels"}
LEGEND = ("*stock*: PyTorch's own kernels, as footnote 5 found them. *suite kernels*: MF-Net's fiber convs, "
          "pointwise convs and BatchNorm + ReLU on the suite's kernels (`models/kernels`), each BatchNorm + "
          "ReLU and residual add folded into the conv beside it (what a run's environment records under "
          "`fiber_kernel` says which of these ran); in bf16 (autocast) inference, oneDNN's bf16 convs with "
          "the BatchNorm + ReLU after them and the residual adds as their epilogues and the rest on the "
          "library's bf16 rows, in bf16 training BatchNorm + ReLU on those rows beside PyTorch's bf16 convs; "
          "Res3D and MF-Net's stem stay on PyTorch's in both. "
          "*channels-last*: every model's input and weights in that layout (MF-Net is channels-last inside "
          "in every setup); *best layout*: each model in whichever of NCDHW and channels-last its inference "
          "ran faster in a probe on that machine (`benchmarks/measure/path.py`); *compiled*: `torch.compile` "
          "(inductor); *onnxruntime*, *openvino*, *tensorrt*: the "
          "model exported and run on that runtime, with its own kernels (`benchmarks/runtimes`).")

def forecast_lines(rates: pd.DataFrame) -> list[str]:
    """Footnote 5's forecast judged: MF-Net's achieved GMAC/s with its fiber convs on the suite's
    kernel over its GMAC/s on stock kernels, per setup (``forecast_row``)."""
    claim = ledger.FOOTNOTE5_FORECAST
    rates = rates[~rates["runtime"].map(runtimes.exported)]  # the forecast is about PyTorch's kernels and the suite's
    mine = rates[rates["model"] == WALLCLOCK_PAIR[0]]
    lines, notes = [], []
    for key, setup in mine.groupby(["device", "device_name", "dtype", "layout", "compiled"], sort=True):
        row, more = forecast_row(setup, rates, setup_label(*key))
        lines += [row] if row else []
        notes += more
    if not lines:
        return []
    return [f"The paper's forecast: \"{claim.quote}\" ({claim.where}). MF-Net's GMAC/s on stock "
            "kernels → on the suite's kernels (`models/kernels`): "
            "from the newest paired run (`--fiber-kernel paired`: both timed in one process, in "
            "alternating rounds, so a drift of the machine moves both alike) whose control, "
            f"`{WALLCLOCK_PAIR[1]}` timed twice in the same rounds, stayed within "
            f"±{CONTROL_TOLERANCE:.0%} of 1×, else from the "
            "newest run of each (a suite run and a `--fiber-kernel stock` one); it holds at ≥ "
            f"{claim.threshold:g}× at the throughput batch and in training and ≥ 1× at batch 1 "
            "(the suite's reading: the paper gives no figure). The stock runs' spread on the same "
            "machine is shown where there are several: a ratio inside it is noise as much as "
            "signal.", "",
            "| setup | inference b=1 | inference, throughput batch | training step | verdict | "
            "runs |", "|---|---|---|---|---|---|", *lines, "", *[n for n in notes if n]]


def chosen_runs(setup: pd.DataFrame, rates: pd.DataFrame):
    """(the newest stock and suite rows to judge, by kernels; the paired runs among them; each
    paired run's control movement; the newer paired runs passed over): the newest paired run
    whose control held, or where none did the newest paired run (not judged), else the newest run
    of each kernels condition."""
    kinds = setup.groupby("run_id")["kernels"].agg(set)
    paired = kinds[kinds.map(lambda k: {"stock", "suite"} <= k)].index
    moved = {run: control_moved(rates, run) for run in paired}
    steady = paired[[moved[run] <= CONTROL_TOLERANCE + 1e-9 for run in paired]]
    passed_over = [] if steady.empty else [
        run for run in paired if moved[run] > CONTROL_TOLERANCE + 1e-9
        and setup[setup["run_id"] == run]["timestamp"].max() > setup[setup["run_id"].isin(steady)]["timestamp"].max()]
    if not steady.empty:
        paired = steady
    newest = {}
    for kernels in ("stock", "suite"):
        part = setup[setup["kernels"] == kernels]
        if not paired.empty:
            part = part[part["run_id"].isin(paired)]
        if not part.empty:
            run = part.groupby("run_id")["timestamp"].max().idxmax()
            newest[kernels] = part[part["run_id"] == run].set_index(["phase", "batch_size"])
    return newest, paired, moved, passed_over


def forecast_row(setup: pd.DataFrame, rates: pd.DataFrame, label: str) -> tuple[str, list[str]]:
    """One setup's row of the forecast table (``""`` where it lacks either kernels) and its notes:
    the paired run's control, and the newer paired runs passed over."""
    newest, paired, moved, passed_over = chosen_runs(setup, rates)
    if len(newest) < 2:
        return "", []
    run = newest["suite"]["run_id"].iloc[0]
    unsteady = not paired.empty and moved[run] > CONTROL_TOLERANCE + 1e-9  # none held
    cells, marks = [], []
    for phase, at_one in (("infer", True), ("infer", False), ("train", False)):
        cell, mark = forecast_cell(setup, newest, phase, at_one, unsteady)
        cells.append(cell)
        marks += [mark] if mark else []
    verdict = (f"not judged: the run's control moved {moved[run]:.0%}" if unsteady
               else "not judged: timed while the machine was shared" if "⚠" in marks
               else "holds" if marks and all(m == "✓" for m in marks)
               else "does not hold here" if marks else "not measured")
    separate = " vs ".join(newest[k]["run_id"].iloc[0] for k in ("stock", "suite"))
    runs = f"{run} (paired)" if not paired.empty else separate
    notes = [control_line(rates, run, label)] if not paired.empty else []
    if passed_over:
        notes.append(f"Passed over ({label}): the newer paired run{'s' if len(passed_over) > 1 else ''} "
                     + ", ".join(f"{r} (control moved {moved[r]:.0%})" for r in sorted(passed_over))
                     + f", beyond ±{CONTROL_TOLERANCE:.0%}: the machine moved a ratio by more than the verdict's "
                     "margin.\n")
    return f"| {label} | {' | '.join(cells)} | {verdict} | {runs} |", notes


def forecast_cell(setup: pd.DataFrame, newest: dict, phase: str, at_one: bool, unsteady: bool) -> tuple[str, str]:
    """(the cell, its mark) for one phase: stock → suite GMAC/s and the ratio, against every stock
    run's spread on this setup (the run-to-run noise the ratio has to clear)."""
    common = sorted(set(newest["stock"].index) & set(newest["suite"].index))
    batches = [b for p, b in common if p == phase]
    batch = 1 if at_one else (batches[-1] if batches else None)
    if (phase, batch) not in common or (not at_one and batch == 1):
        return "–", ""
    stock, suite = (newest[k].loc[(phase, batch)] for k in ("stock", "suite"))
    r = suite["value"] / stock["value"]
    stock_runs = setup[(setup["kernels"] == "stock") & (setup["phase"] == phase)
                       & (setup["batch_size"] == batch)].groupby("run_id")["value"].last()
    mark = "✓" if r >= (1.0 if at_one else ledger.FOOTNOTE5_FORECAST.threshold) else "✗"
    if unsteady or disturbance.is_disturbed(stock["note"]) or disturbance.is_disturbed(suite["note"]):
        mark = "⚠"
    spread = (f"; stock over {len(stock_runs)} runs: {stock_runs.min():.0f}–{stock_runs.max():.0f}"
              if len(stock_runs) > 1 else "")
    return (f"{stock['value']:.0f} → {suite['value']:.0f} = **{r:.2f}×** {mark}"
            + ("" if at_one else f" (b={batch})") + spread), mark


def control_ratios(rates: pd.DataFrame, run: str) -> dict[tuple[str, int], float]:
    """The paired run's own noise: the dense model has no grouped convs, so its two conditions
    run the same model twice, in the same alternating rounds; its "suite / stock" ratio per
    (phase, batch) is what the machine alone did to a ratio. Empty where the run did not time it."""
    dense = rates[(rates["model"] == WALLCLOCK_PAIR[1]) & (rates["run_id"] == run)]
    pick = dense.set_index(["kernels", "phase", "batch_size"])["value"]
    ratios = {}
    for phase in ("infer", "train"):
        for batch in sorted(dense[dense["phase"] == phase]["batch_size"].unique()):
            if ("stock", phase, batch) in pick.index and ("suite", phase, batch) in pick.index:
                ratios[(phase, int(batch))] = pick[("suite", phase, batch)] / pick[("stock", phase, batch)]
    return ratios

def control_moved(rates: pd.DataFrame, run: str) -> float:
    """How far the run's control strayed from 1x at most (0 where it has none)."""
    return max((abs(r - 1) for r in control_ratios(rates, run).values()), default=0.0)

def control_line(rates: pd.DataFrame, run: str, label: str) -> str:
    """The paired run's control ratios in a sentence; "" where the run did not time it."""
    what = {"infer": "inference", "train": "training"}
    cells = [f"{what[phase]} b={batch} {ratio:.2f}×"
             for (phase, batch), ratio in control_ratios(rates, run).items()]
    if not cells:
        return ""
    return (f"Control ({label}, run {run}): `{WALLCLOCK_PAIR[1]}` has no grouped convs, so the "
            f"paired run timed the same model twice; its ratios, {', '.join(cells)}, are what "
            "the machine alone did to a ratio in that run.\n")
