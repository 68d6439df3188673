"""Which model is fastest here, on its best runtime and precision: per device, each model's latency
and throughput on every runtime and dtype measured (the fastest marked), footnote 5's ratio
(MF-Net's achieved GMAC/s over the dense model's) under each, and the paper's accuracy against
the best throughput measured."""

import pandas as pd
import torch

import models
from benchmarks.measure import peak
from benchmarks.reporting import figures
from benchmarks.reporting.format import fmt
from benchmarks.reporting.rows import DEFAULT_LAYOUTS, spec_clip
from benchmarks.reporting.wallclock import WALLCLOCK_PAIR, WALLCLOCK_TARGET
from models import ledger

ORDER = ("eager", "compile", "onnxruntime", "openvino", "tensorrt")


def timed(rows: pd.DataFrame) -> pd.DataFrame:
    """The newest speed rows at each model's paper input, on each model's default path (its best
    layout where one was chosen, the suite's kernels under eager where a paired run timed both),
    one per (device, runtime, dtype, model, metric, batch)."""
    speed = rows[(rows["measurement"] == "speed") & rows["model"].isin(models.list_models())
                 & rows["layout"].isin(DEFAULT_LAYOUTS)
                 & rows["metric"].isin(["latency_ms", "infer_clips_per_s", "gmacs_per_s"])]
    speed = speed[speed["clip"] == speed["model"].map(spec_clip)]
    speed = speed.assign(_suite=speed["kernels"] == "suite", _best=speed["layout"] == "best")
    speed = speed.sort_values(["_best", "timestamp", "_suite"])  # a paired run's rows share a timestamp
    return speed.drop_duplicates(["device", "device_name", "runtime", "dtype", "model", "metric", "phase",
                                  "batch_size"], keep="last")


def runtime_section(rows: pd.DataFrame, out) -> list[str]:
    """The section, for each device where more than eager fp32 was timed; ``rows``: the newest ok
    rows per key."""
    speed = timed(rows)
    known = rows[rows["model"].isin(models.list_models())]
    counted = known[(known["metric"] == "params") & (known["clip"] == known["model"].map(spec_clip))]
    params = dict(zip(counted["model"], counted["value"] / 1e6))
    lines = []
    for index, ((kind, name), own) in enumerate(speed.groupby(["device", "device_name"], sort=True)):
        own = raced(own)
        setups = sorted({(r, d) for r, d in zip(own["runtime"], own["dtype"])},
                        key=lambda s: (ORDER.index(s[0]) if s[0] in ORDER else 99, s[1]))
        if setups in ([], [("eager", "fp32")]):
            continue
        lines += device_table(own, kind, name, setups)
        lines += served_line(own, kind)
        lines += footnote5_line(own, setups)
        lines += best_chart(own, params, name, out / f"runtimes_{index}")
    if not lines:
        return []
    return ["## Runtimes and precisions: which model is fastest here", "",
            "Each model at its paper input on every runtime and precision measured "
            "(`python benchmarks/run.py --measure speed --runtime eager,compile,onnxruntime,openvino "
            "[--dtype bf16]`): latency at batch 1 (ms) / inference clips/s at the throughput batch. Eager runs "
            "each model's default kernels; the exported runtimes run the model exported once to ONNX "
            "(`benchmarks/runtimes`), after their outputs were checked against eager's on a fixed input. "
            "**Bold**: the model's highest throughput here.", "", *lines]


def raced(own: pd.DataFrame) -> pd.DataFrame:
    """The rows of the models timed under more than one (runtime, dtype) on this device: a model
    timed on eager fp32 alone is in the efficiency table already."""
    setups = own.groupby("model")[["runtime", "dtype"]].apply(lambda m: len(m.drop_duplicates()))
    return own[own["model"].isin(setups[setups > 1].index)]


def device_table(own: pd.DataFrame, kind: str, name: str, setups: list[tuple[str, str]]) -> list[str]:
    header = " | ".join(f"{runtime} {dtype}" for runtime, dtype in setups)
    lines = [f"### {name} ({kind})", "", f"| model | {header} |", "|---|" + "---|" * len(setups)]
    for model in sorted(own["model"].unique(), key=lambda m: models.display_name(m)):
        mine = own[own["model"] == model]
        rates = {s: _value(mine, s, "infer_clips_per_s") for s in setups}
        best = max((v for v in rates.values() if v is not None), default=None)
        cells = []
        for s in setups:
            latency, rate = _value(mine, s, "latency_ms", batch=1), rates[s]
            if latency is None and rate is None:
                cells.append("–")
                continue
            shown = fmt(rate) if rate is not None else "–"
            cells.append(f"{fmt(latency) if latency is not None else '–'} / "
                         + (f"**{shown}**" if rate is not None and rate == best else shown))
        lines.append(f"| {models.display_name(model)} | {' | '.join(cells)} |")
    return [*lines, ""]


def served_line(own: pd.DataFrame, kind: str) -> list[str]:
    """Which of the CPU's instruction sets ran its bf16 and fp16 setups natively, as their runs
    recorded them (``peak.NATIVE_ON_CPU``)."""
    if kind != "cpu" or "env_cpu_flags" not in own:
        return []
    parts = []
    for dtype in ("bf16", "fp16"):
        flags = own[own["dtype"] == dtype]["env_cpu_flags"]
        flags = [f for f in flags if isinstance(f, list)]
        if flags:
            native = [f for f in peak.NATIVE_ON_CPU[dtype] if f in flags[-1]]
            parts.append(f"{' and '.join(native)} for {dtype}" if native else f"no native {dtype}")
    return [f"This CPU has {'; '.join(parts)} (the instruction sets its runs recorded).", ""] if parts else []


def footnote5_line(own: pd.DataFrame, setups: list[tuple[str, str]]) -> list[str]:
    """MF-Net's achieved GMAC/s over the dense model's at the throughput batch, per setup."""
    mf, dense = WALLCLOCK_PAIR
    parts = []
    for s in setups:
        a = _value(own[own["model"] == mf], s, "gmacs_per_s", throughput=True)
        d = _value(own[own["model"] == dense], s, "gmacs_per_s", throughput=True)
        if a is not None and d:
            mark = "✓" if a / d >= WALLCLOCK_TARGET else "✗"
            parts.append(f"{s[0]} {s[1]} **{a / d:.2f}×** {mark}")
    if not parts:
        return []
    return [f"Footnote 5 per runtime: {models.display_name(mf)}'s achieved GMAC/s over "
            f"{models.display_name(dense)}'s at the throughput batch (target {WALLCLOCK_TARGET}×): "
            + "; ".join(parts) + ".", ""]


def best_chart(own: pd.DataFrame, params: dict[str, float], name: str, path) -> list[str]:
    """The paper's Kinetics-400 top-1 against each model's best measured throughput here; circle
    area proportional to the counted params (``params``, M, by model)."""
    points = []
    for model in own["model"].unique():
        accuracy = [a.value for a in ledger.published(model).accuracy
                    if a.dataset == "kinetics400" and a.metric == "top1"] if model in ledger.PUBLISHED else []
        rates = own[(own["model"] == model) & (own["metric"] == "infer_clips_per_s")]["value"]
        if accuracy and not rates.empty:
            count = params.get(model) or _params_m(model)
            points.append((float(rates.max()), accuracy[0], count, model))
    if not points:
        return []
    figures.measured_bubbles(points, "best measured inference clips/s on any runtime and precision (log)",
                             "Kinetics-400 top-1 % (paper / model zoo, not measured here)", name, path,
                             "tab:orange", ylim=None)
    return [f"![the paper's accuracy against the best measured throughput on {name}]({path.name}.png)", ""]


def _params_m(name: str) -> float:
    """Parameters in millions, counted on the meta device, where no cost row holds them."""
    with torch.device("meta"):
        return sum(p.numel() for p in models.create_model(name).parameters()) / 1e6


def _value(rows: pd.DataFrame, setup: tuple[str, str], metric: str, batch: int | None = None,
           throughput: bool = False) -> float | None:
    runtime, dtype = setup
    mine = rows[(rows["runtime"] == runtime) & (rows["dtype"] == dtype) & (rows["metric"] == metric)
                & (rows["phase"] == "infer")]
    if batch is not None:
        mine = mine[mine["batch_size"] == batch]
    elif throughput or metric == "infer_clips_per_s":
        mine = mine[mine["batch_size"] == mine["batch_size"].max()] if not mine.empty else mine
        mine = mine[mine["batch_size"] > 1]
    return None if mine.empty else float(mine["value"].iloc[-1])
