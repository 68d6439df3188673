"""The results store: one tidy CSV row per measurement, append-only, written atomically.

``results/measurements.csv`` holds every row (schema in ``results/README.md``);
``results/runs/<run_id>.json`` holds each run's environment. ``load_results`` reads both into
one pandas DataFrame for the report.
"""

import csv
import datetime as dt
import fcntl
import io
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

COLUMNS = ("run_id", "timestamp", "model", "measurement", "metric", "value", "unit", "phase",
           "device", "device_name", "dtype", "batch_size", "clip", "channels_last", "compiled", "iqr",
           "repeats", "dataset", "epoch", "views", "status", "error", "note", "weights", "seed")
CSV_NAME = "measurements.csv"


@dataclass
class Measurement:
    """One number, with everything needed to read it."""

    model: str
    measurement: str  # cost | memory | speed | accuracy: the module that produced it
    metric: str  # stable names, see results/README.md
    value: float | None
    unit: str
    phase: str = ""  # infer | train, where it matters
    batch_size: int = 1
    clip: str = ""  # "TxHxW" for clips, "HxW" for images
    iqr: float | None = None  # interquartile range of repeated timings, in ``unit``
    repeats: int | None = None  # how many timed runs the median is over
    dataset: str = ""  # accuracy rows: motion | ucf101 | hmdb51 | kinetics400 | folder (+ split)
    epoch: int | None = None  # accuracy rows: per-epoch curves
    views: str = ""  # accuracy rows: "NxM", N clips x M crops per video
    status: str = "ok"  # ok | error
    error: str = ""
    note: str = ""
    # accuracy rows: where the weights came from: trained | finetuned:<file>@<sha256[:12]> |
    # file:<file>@<sha256[:12]> (a file evaluated as is)
    weights: str = ""
    seed: int | None = None  # accuracy rows: the training seed


@dataclass(frozen=True)
class RunConditions:
    run_id: str
    device: str
    device_name: str  # CPU or GPU model: a fresh clone on another machine measures anew
    dtype: str
    channels_last: bool
    compiled: bool


class ResultsStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.csv = self.root / CSV_NAME

    def check_writable(self) -> None:
        """Raise ``OSError`` now, before any measuring, if results cannot be written."""
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        probe = self.root / ".write-probe"
        probe.write_text("")
        probe.unlink()

    def write_environment(self, run_id: str, environment: dict) -> None:
        _atomic_write(self.root / "runs" / f"{run_id}.json",
                      (json.dumps(environment, indent=2, sort_keys=True) + "\n").encode())

    def append(self, rows: list[Measurement], run: RunConditions, timestamp: str) -> None:
        """Add rows in one atomic replace: a kill at any moment leaves the old file or the new
        one, never half a row."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
        for row in rows:
            record = asdict(row) | {"run_id": run.run_id, "timestamp": timestamp,
                                    "device": run.device, "device_name": run.device_name,
                                    "dtype": run.dtype,
                                    "channels_last": run.channels_last, "compiled": run.compiled}
            record["error"] = " ".join(str(record["error"]).split())  # one line
            writer.writerow(record)
        with self._locked():
            old = self.csv.read_bytes() if self.csv.exists() else b""
            if not old.startswith((",".join(COLUMNS) + "\n").encode()):
                old = self._migrated(old)
            _atomic_write(self.csv, old + buffer.getvalue().encode())

    def _migrated(self, old: bytes) -> bytes:
        """The existing rows under the current header (an empty file gets just the header).
        Rows written before a column existed get it filled in by ``read_csv``."""
        if not old.strip():
            return (",".join(COLUMNS) + "\n").encode()
        frame = read_csv(self.csv)
        return frame.to_csv(index=False, columns=list(COLUMNS), lineterminator="\n").encode()

    def done(self, model: str, measurement: str, run: RunConditions, clip: str,
             required: list[tuple], dataset: str | None = None) -> bool:
        """Whether ok rows already hold every ``(metric, batch[, note])`` in ``required`` for
        this measurement under these conditions (batch None: any; note: the row's note must be
        this, e.g. an accuracy protocol; ``dataset``: the rows' dataset, for accuracy). A run
        killed halfway, or one that measured less (``--quick`` skips the CPU RSS probe), is
        not done."""
        frame = self.frame()
        if frame.empty:
            return False
        key = {"model": model, "measurement": measurement, "device": run.device,
               "device_name": run.device_name, "dtype": run.dtype, "clip": clip,
               "channels_last": run.channels_last, "compiled": run.compiled}
        if dataset is not None:
            key["dataset"] = dataset
        mask = frame["status"] == "ok"
        for column, value in key.items():
            mask &= frame[column] == value
        held = frame[mask]
        for metric, batch, *note in required:
            rows = held[held["metric"] == metric]
            if batch is not None:
                rows = rows[rows["batch_size"] == batch]
            if note:
                rows = rows[rows["note"] == note[0]]
            if rows.empty:
                return False
        return True

    def frame(self) -> pd.DataFrame:
        return read_csv(self.csv)

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def read_csv(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(path, dtype={"clip": str, "error": str, "note": str, "phase": str,
                                     "device_name": str, "dataset": str, "views": str,
                                     "weights": str},
                        keep_default_na=False, na_values={"value": [""], "iqr": [""], "repeats": [""]})
    # stores written before a column existed: fill it in, the machine from the run's sidecar
    if "device_name" not in frame.columns:
        frame["device_name"] = [_run_environment(path.parent, run).get("device_name", "")
                                for run in frame["run_id"]]
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA if column in ("epoch", "seed") else ""
    frame = frame[list(COLUMNS)]
    for column in ("channels_last", "compiled"):
        frame[column] = frame[column].astype(str) == "True"
    for column in ("value", "iqr", "repeats"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("batch_size", "epoch", "seed"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def _run_environment(root: Path, run_id: str) -> dict:
    path = root / "runs" / f"{run_id}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_results(root: str | os.PathLike = "results") -> pd.DataFrame:
    """Every row, joined with its run's environment (columns prefixed ``env_``)."""
    root = Path(root)
    frame = read_csv(root / CSV_NAME)
    envs = []
    for path in sorted((root / "runs").glob("*.json")):
        env = json.loads(path.read_text())
        envs.append({"run_id": path.stem} | {f"env_{k}": v for k, v in env.items()})
    if envs and not frame.empty:
        frame = frame.merge(pd.DataFrame(envs), on="run_id", how="left")
    return frame


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time plus a random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
