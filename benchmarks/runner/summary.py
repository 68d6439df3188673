"""The console's summary of a run: the newest rows of the models it measured, and the motion
benchmark's results."""

from rich.console import Console
from rich.table import Table

from benchmarks.data import motion
from benchmarks.runner.plan import clip_label
from benchmarks.store import ResultsStore, RunConditions, under

SUMMARY = (("params", "params (M)", 1e-6), ("gmacs", "GMACs", 1), ("activation_mb", "act. MB", 1),
           ("latency_ms", "latency ms", 1), ("infer_clips_per_s", "infer clips/s", 1),
           ("train_clips_per_s", "train clips/s", 1))


def print_summary(console: Console, store: ResultsStore, names, run: RunConditions, clip,
                  kernels: dict[str, str] | None = None) -> None:
    """The newest rows of each of ``names`` under ``run``, each on its own ``kernels`` where
    given (a best-path probe chose them)."""
    frame = store.frame()
    frame = frame[(frame["status"] == "ok") & under(frame, run, ("kernels",))]
    table = Table(title=f"{run.device} / {run.dtype} / {run.runtime} (newest row per model and metric)")
    table.add_column("model", no_wrap=True)
    for _, header, _ in SUMMARY:
        table.add_column(header, justify="right")
    table.add_column("peak frac. (b=1)", justify="right")
    for name in names:
        mine = (kernels or {}).get(name) or run.kernels
        rows = frame[(frame["model"] == name) & (frame["clip"] == clip_label(name, clip))
                     & ((frame["kernels"] == mine) | (frame["measurement"] != "speed"))]
        cells = []
        for metric, _, scale in SUMMARY:
            values = rows[rows["metric"] == metric]["value"]
            cells.append(f"{values.iloc[-1] * scale:.4g}" if len(values) else "-")
        fraction = rows[(rows["metric"] == "peak_fraction") & (rows["batch_size"] == 1)]["value"]
        cells.append(f"{fraction.iloc[-1]:.0%}" if len(fraction) else "-")
        table.add_row(name, *cells)
    console.print(table)


def print_accuracy_summary(console: Console, store: ResultsStore, names, run: RunConditions,
                           clip: str, protocol: str) -> None:
    frame = store.frame()
    frame = frame[(frame["status"] == "ok") & (frame["measurement"] == "accuracy") & under(frame, run)
                  & (frame["clip"] == clip) & (frame["dataset"] == motion.LABEL)]
    runs = set(frame[(frame["metric"] == "top1_video") & (frame["protocol"] == protocol)]["run_id"])
    frame = frame[frame["run_id"].isin(runs)]
    table = Table(title=f"motion benchmark at {clip}, {protocol} (newest run per model)")
    for header in ("model", "train s", "epochs", "clips seen", "top-1 video %"):
        table.add_column(header, justify="left" if header == "model" else "right", no_wrap=header == "model")
    for name in names:
        rows = frame[frame["model"] == name]
        if rows.empty:
            continue
        rows = rows[rows["run_id"] == rows["run_id"].iloc[-1]].set_index("metric")["value"]
        table.add_row(name, *(f"{rows[m]:.4g}" if m in rows else "-" for m in
                              ("train_seconds", "epochs_completed", "clips_seen", "top1_video")))
    console.print(table)
