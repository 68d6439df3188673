"""Efficiency per device: cost, memory and speed side by side, the machine's peak, and every
device compared model by model."""

import re
from pathlib import Path

import pandas as pd

import models
from benchmarks.machine import disturbance
from benchmarks.measure import path as path_probe
from benchmarks.reporting import figures
from benchmarks.reporting.devices import Device, facts
from benchmarks.reporting.format import fmt
from benchmarks.reporting.rows import Measured, spec_clip


def efficiency_table(m: Measured, names: list[str]) -> list[str]:
    peak_metric, peak_header = (("peak_alloc_mb_train", "peak alloc MB (train)") if m.device == "cuda"
                                else ("peak_rss_mb_train", "peak RSS MB (train)"))
    header = ["model", "input", "path", "GMACs", "params M", "activation MB/clip", "latency ms (b=1)",
              "infer clips/s", "train clips/s", "batch", peak_header,
              "GMAC/s (b=1)", "peak fraction (b=1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        b = m.throughput_batch(name)
        params = m.get(name, "params")
        fraction = m.get(name, "peak_fraction", 1)
        cells = [models.display_name(name), spec_clip(name), path(m, name, b), fmt(m.get(name, "gmacs")),
                 fmt(None if params is None else params / 1e6), fmt(m.get(name, "activation_mb")),
                 m.timed(name, "latency_ms"), m.timed(name, "infer_clips_per_s", b),
                 m.timed(name, "train_clips_per_s", b), "–" if b is None else str(b),
                 fmt(m.get(name, peak_metric)), m.timed(name, "gmacs_per_s", 1),
                 "–" if fraction is None else f"{fraction:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", PATH_TEXT]
    notes = {n: m.row(n, metric, batch)["note"] for n in names
             for metric, batch in (("train_clips_per_s", m.throughput_batch(n)),
                                   ("infer_clips_per_s", m.throughput_batch(n)), ("latency_ms", None))
             if m.disturbed(n, metric, batch)}
    marked = list(notes)
    if marked:
        why = notes[marked[0]].split(";")[0].removeprefix(f"{disturbance.MARK}: ")
        lines += ["", f"⚠ Timed while the machine was shared ({len(marked)} model(s); e.g. "
                      f"{why}): these timings may be low and no verdict is drawn from them. Run "
                      "`python benchmarks/run.py --measure speed --force --models "
                      f"{','.join(marked)}` on a quiet machine."]
    return lines

PATH_TEXT = ("*path*: the layout each model's timings ran in, NCDHW or channels-last (CL), and *suite* where its "
             "grouped and pointwise convs ran on the suite's kernels (`models/kernels`); *best*: the path a probe "
             "on this machine found fastest (`benchmarks/measure/path.py`).")


def path(m: Measured, name: str, batch: int | None) -> str:
    """How ``name``'s timings ran: layout (and whether a probe chose it), and the suite's kernels."""
    row = m.row(name, "infer_clips_per_s", batch)
    row = m.row(name, "latency_ms") if row is None else row
    if row is None:
        return "–"
    text = ("CL" if row["channels_last"] else "NCDHW") + (" (best)" if row["layout"] == "best" else "")
    return text + (", suite" if row["kernels"] == "suite" and path_probe.kernels_apply(name) else "")


SPEED_TEXT = ("Speed is the median of `torch.utils.benchmark` timings (IQR in `results/`); the peak "
              "fraction compares achieved GMAC/s with the machine's peak in the same run. A matmul alone is "
              "no roofline on every CPU: MKL's sgemm may take an AVX2 path on AMD processors while oneDNN's "
              "convolutions use AVX-512, so the faster of the two is the peak. A training step counts 3× the "
              "forward multiply-adds. Where a model was re-measured the newest row is shown, with its own "
              "run's peak.")


def device_section(device: Device, frame: pd.DataFrame, names: list[str], out: Path, first: bool) -> list[str]:
    """One device's efficiency table: the models it has timed, a line naming those it has not and
    the command that times them, its peak and the job's memory; the first (the most complete)
    also gets the speed and memory figures."""
    m = device.measured
    shown = device.models(names)
    lines = [f"## Efficiency on {device.label} ({device.kind}, fp32)", "",
             f"The machine, as its newest run recorded it: {facts(device, frame)}. Peak: {peak_text(m)}.", ""]
    if first:
        lines += [SPEED_TEXT, ""]
    lines += efficiency_table(m, shown)
    missing = [n for n in names if n not in shown]
    if missing:
        where = " --device cuda" if device.kind == "cuda" else ""
        lines += ["", f"Not measured on this device: {', '.join(models.display_name(n) for n in missing)} "
                      f"(`python benchmarks/run.py{where} --models {','.join(missing)} --measure memory,speed` "
                      "there)."]
    lines += ["", *job_memory_text(m)]
    if device.kind == "cuda":
        figure = "memory_" + "".join(c if c.isalnum() else "_" for c in device.name.lower())
        figures.gpu_memory(m, shown, out / figure)
        lines += [f"![GPU peak memory]({figure}.png)", ""]
    if first:
        m.label = f"{device.label} ({device.kind}), torch {_torch(device, frame)}"
        figures.speed_vs_cost(m, shown, out / "speed_vs_cost")
        figures.memory(m, shown, out / "memory")
        lines += ["![speed against cost](speed_vs_cost.png)", "", "![memory](memory.png)", ""]
    return lines


def _torch(device: Device, frame: pd.DataFrame) -> str:
    own = frame[(frame["device"] == device.kind) & (frame["device_name"] == device.name)]
    return str(own.sort_values("timestamp").iloc[-1].get("env_torch", "?"))


def devices_compared(found: list[Device], names: list[str], out: Path) -> list[str]:
    """Every device with timings, side by side model by model: latency and throughput, and a
    chart of inference clips/s per model and device."""
    if len(found) < 2:
        return []
    per_device = [(f"{d.label} ({d.kind})", d.measured) for d in found]
    shown = [n for n in names if any(m.get(n, "latency_ms") is not None for _, m in per_device)]
    header = ["model", *(f"{label}: latency ms / infer clips/s" for label, _ in per_device)]
    lines = ["## Devices compared", "",
             "The same models on every device the stores hold (`report.py --results A B ...`), "
             "fp32, each device's newest rows; throughput at that device's batch.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rates = {}
    for name in shown:
        cells = [models.display_name(name)]
        for label, m in per_device:
            rate = m.get(name, "infer_clips_per_s", m.throughput_batch(name))
            rates[(name, label)] = rate
            cells.append(f"{fmt(m.get(name, 'latency_ms'))} / {fmt(rate)}")
        lines.append("| " + " | ".join(cells) + " |")
    if not any(rate for rate in rates.values()):
        return lines + [""]
    figures.devices(rates, shown, [label for label, _ in per_device], out / "devices")
    return lines + ["", "![inference clips/s per device](devices.png)", ""]

def peak_text(m: Measured) -> str:
    """The newest run's peak (and its matmul and conv parts) before and after its sweep: drift
    shows a noisy machine."""
    machine = m.rows[m.rows["model"] == "_machine"]
    peaks = machine[machine["metric"] == "peak_gmacs_per_s"]
    if peaks.empty:
        return "not measured"
    run = peaks.sort_values("timestamp")["run_id"].iloc[-1]
    newest_run = machine[machine["run_id"] == run]
    values = {(r.metric, r.phase): r.value for r in newest_run.itertuples()}
    notes = {r.phase: r.note for r in newest_run.itertuples() if r.metric == "peak_gmacs_per_s"}
    text = f"{fmt(values.get(('peak_gmacs_per_s', 'start')))} GMAC/s"
    parts = [f"{kind} {fmt(values[(f'peak_gmacs_per_s_{kind}', 'start')])}"
             for kind in ("matmul", "conv") if (f"peak_gmacs_per_s_{kind}", "start") in values]
    if parts:
        problem, fitted = _problem(notes.get("start", ""))
        text += f", the faster of a {problem} ({', '.join(parts)})" + (f" ({fitted})" if fitted else "")
    if ("peak_gmacs_per_s", "end") in values:
        text += f"; {fmt(values[('peak_gmacs_per_s', 'end')])} after the sweep"
    return text + f", run {run}"

def _problem(note: str) -> tuple[str, str]:
    """(the peak's problem, what it was fitted to where it was not full size: a dtype the CPU
    emulates), as the peak row's note names them."""
    side = re.search(r"a (\d+)\^3 matmul", note)
    fitted = note.split("; ", 1)[1] if "; " in note else ""
    return f"{side.group(1) if side else 2048}³ matmul and a dense 3×3×3 conv", fitted


def job_memory_text(m: Measured) -> list[str]:
    """The newest run's own peak resident set (``run.py``'s memory guard keeps it in bounds)."""
    row = m.row("_machine", "job_peak_rss_mb")
    if row is None:
        return []
    return [f"The newest run that recorded it (run {row['run_id']}) peaked at {fmt(row['value'])} MB "
            f"resident: {row['note']}. Measurements estimated not to fit in the memory left are "
            "skipped with an error row (the memory guard, see the README).", ""]
