"""The devices a report's stores hold timings from: what each is (its CPU's model, instruction
sets, cores and threads, as its newest run recorded them), how completely it was measured, and
which device's rows answer a question that needs a device (the newest that has them)."""

from dataclasses import dataclass

import pandas as pd

from benchmarks.reporting.format import fmt
from benchmarks.reporting.rows import Measured, default_path, spec_clip

# what a device's efficiency table holds, per model; completeness counts these cells
TIMED = ("latency_ms", "infer_clips_per_s", "train_clips_per_s", "peak_rss_mb_train", "peak_alloc_mb_train")


@dataclass
class Device:
    kind: str  # cpu | cuda
    name: str  # as its rows record it (``device_name``)
    measured: Measured
    cells: int  # timed cells it fills, over every model
    newest: str  # its newest timed row's timestamp
    label: str = ""  # how the report names it (``devices``)

    def models(self, names: list[str]) -> list[str]:
        """Of ``names``, those with a timed value here."""
        return [n for n in names if any(self.measured.get(n, metric) is not None for metric in TIMED)]


def devices(rows: pd.DataFrame) -> list[Device]:
    """Every device with timed rows (fp32, default format, eager), most completely measured first
    (then the newest); ``rows``: the newest ok row per key."""
    timed = rows[rows["measurement"].isin(["speed", "memory"]) & (rows["model"] != "_machine")
                 & (rows["dtype"] == "fp32") & default_path(rows)
                 & (rows["runtime"] == "eager")]
    timed = timed[timed["metric"].isin(TIMED) & (timed["clip"] == timed["model"].map(_clip))]
    found = []
    for (kind, name), own in timed.groupby(["device", "device_name"]):
        cells = len(own.drop_duplicates(["model", "metric"]))
        found.append(Device(kind, name, Measured(rows, kind, name), cells, own["timestamp"].max(), name))
    for device in found:
        device.label = label_of(device.kind, device.name, rows)
    return sorted(found, key=lambda d: (-d.cells, _descending(d.newest)))


def label_of(kind: str, name: str, rows: pd.DataFrame) -> str:
    """How the report names a device. A CPU's name carries the instruction set its kernels ran
    (``environment.device_name``): rows from before that was recorded bear the bare name, which
    may be any of the same CPU's others, and the label says so."""
    if kind == "cpu" and rows["device_name"].astype(str).str.startswith(name + " (").any():
        return f"{name} (instruction set not recorded)"
    return name


def _clip(name: str) -> str | None:
    try:
        return spec_clip(name)
    except ValueError:  # a model registered by a file this report was not given
        return None


def _descending(stamp: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in stamp)


def newest_with(found: list[Device], names: list[str], metric: str) -> Device | None:
    """The device whose newest rows hold ``metric`` for every model of ``names``."""
    having = [d for d in found if all(d.measured.get(n, metric) is not None for n in names)]
    return max(having, key=lambda d: max(d.measured.row(n, metric)["timestamp"] for n in names), default=None)


def facts(device: Device, frame: pd.DataFrame) -> str:
    """What its newest run with a readable sidecar recorded of the machine: the CPU's model, its
    instruction sets, cores and threads (or the GPU), and, for a CPU whose instruction set was not recorded, what its
    dense-conv peak says of it beside the same CPU name's recorded runs."""
    own = frame[(frame["device"] == device.kind) & (frame["device_name"] == device.name)].sort_values("timestamp")
    newest = own.iloc[-1]
    # a run whose sidecar is missing or damaged has no env_ columns: the newest that has them
    described = own[own["env_cpu"].notna()] if "env_cpu" in own else own.iloc[:0]
    env = described.iloc[-1] if len(described) else newest
    parts = []
    if device.kind == "cpu":
        cpu = env.get("env_cpu")
        parts.append(str(cpu) if isinstance(cpu, str) and cpu else device.name.split(" (")[0])
        flags = env.get("env_cpu_flags")
        parts.append(", ".join(flags) if isinstance(flags, list) and flags else "instruction sets not recorded")
        cores = next((env[k] for k in ("env_cpu_cores_allowed", "env_cpu_count") if pd.notna(env.get(k))), None)
        threads = env.get("env_threads")
        if cores is not None:
            parts.append(f"{int(cores)} cores")
        if pd.notna(threads):
            parts.append(f"{int(threads)} threads")
    text = "; ".join(p for p in parts if p)
    if device.kind == "cpu" and device.label != device.name:
        text += _peak_hint(device, frame)
    runs = own["run_id"].nunique()
    return f"{text} ({runs} runs, the newest {newest['run_id']})" if text else f"{runs} runs"


def _peak_hint(device: Device, frame: pd.DataFrame) -> str:
    peaks = frame[(frame["metric"] == "peak_gmacs_per_s_conv") & (frame["status"] == "ok")]
    mine = peaks[peaks["device_name"] == device.name]["value"]
    if mine.empty:
        return ""
    others = []
    for name, group in peaks[peaks["device_name"].str.startswith(device.name + " (")].groupby("device_name"):
        others.append(f"{name.split(' (')[-1].rstrip(')')} runs up to {fmt(group['value'].max())}")
    if not others:
        return ""
    return (f"; its dense-conv peak reached {fmt(mine.max())} GMAC/s, against the same CPU name's "
            f"{', '.join(others)}")
