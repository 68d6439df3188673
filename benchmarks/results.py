"""The results store: one tidy CSV row per measurement, append-only, written atomically.

``results/measurements.csv`` holds every row (schema in ``results/README.md``);
``results/runs/<run_id>.json`` holds each run's environment. ``load_results`` reads both into
one pandas DataFrame for the report.
"""

import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

# Version 2 added weights, seed, threads, protocol and schema; version 3 added kernels. Every
# row records the version that wrote it; a store holding rows of a newer version is refused,
# never rewritten.
SCHEMA_VERSION = 3
COLUMNS = ("run_id", "timestamp", "model", "measurement", "metric", "value", "unit", "phase",
           "device", "device_name", "dtype", "batch_size", "clip", "channels_last", "compiled",
           "kernels", "iqr", "repeats", "dataset", "epoch", "views", "status", "error", "note",
           "weights", "seed", "threads", "protocol", "schema")
# What makes two rows the same measurement, beside the model, metric, phase, batch and clip:
# where and how it ran. Resume (``ResultsStore.done``), the summaries and the report use it.
CONDITION_COLUMNS = ("device", "device_name", "threads", "dtype", "channels_last", "compiled",
                     "kernels")
# kernels: "stock" (PyTorch's own, run.py --fiber-kernel stock) or "suite": grouped (1|3)x3x3
# convs on the suite's fiber-conv kernel (models/fiber_kernel.py) where it applies, the default
CSV_NAME = "measurements.csv"


class StoreError(OSError):
    """A store that cannot be read or written safely; the message is one line."""


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
    # accuracy rows: how long every model trained ("equal time, 60 s" or "equal epochs, 6")
    protocol: str = ""
    # the row's own kernels condition, in a run that times two against each other
    # (``run.py --fiber-kernel paired``); blank: the run's
    kernels: str = ""


@dataclass(frozen=True)
class RunConditions:
    """The conditions of every row a run writes (``CONDITION_COLUMNS``), and its id."""

    run_id: str
    device: str
    device_name: str  # CPU or GPU model: a fresh clone on another machine measures anew
    dtype: str
    channels_last: bool
    compiled: bool
    # intra-op threads: a 64-thread host must not take a 2-thread host's timings as its own
    # (0: not recorded, in rows written before the column existed and not filled from a sidecar)
    threads: int = 0
    kernels: str = "stock"

    def key(self) -> dict:
        return {column: getattr(self, column) for column in CONDITION_COLUMNS}


def under(frame: pd.DataFrame, run: RunConditions, ignore: tuple[str, ...] = ()) -> pd.Series:
    """The rows measured under ``run``'s conditions, but for the columns in ``ignore``."""
    mask = pd.Series(True, index=frame.index)
    for column, value in run.key().items():
        if column not in ignore:
            mask &= frame[column] == value
    return mask


class ResultsStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.csv = self.root / CSV_NAME

    def check_writable(self) -> None:
        """Raise ``OSError`` now, before any measuring, if results cannot be written."""
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        for path in (self.csv, self.root / ".lock"):
            if path.exists() and not path.is_file():
                raise StoreError(f"{path} is not a file")
        probe = self.root / f".write-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # two starts never clash
        probe.write_text("")
        probe.unlink()
        self.schema_check()

    def schema_check(self) -> None:
        """Refuse a store written by a newer version of the suite: rewriting it would lose what
        this version does not know."""
        newest = read_csv(self.csv)["schema"].max() if self.csv.is_file() else None
        if newest is not None and pd.notna(newest) and int(newest) > SCHEMA_VERSION:
            raise StoreError(f"{self.csv} was written by a newer version of the suite (schema "
                             f"{int(newest)}, this one writes {SCHEMA_VERSION}); update the checkout")

    def write_environment(self, run_id: str, environment: dict) -> None:
        _atomic_write(self.root / "runs" / f"{run_id}.json",
                      (json.dumps(environment, indent=2, sort_keys=True) + "\n").encode())

    def append(self, rows: list[Measurement], run: RunConditions, timestamp: str) -> None:
        """Add rows in one atomic replace: a kill at any moment leaves the old file or the new
        one, never half a row. Columns this version does not know are kept; a damaged last line
        (a truncated copy, another tool killed mid-write) is ended, never extended, and readers
        skip it."""
        with self._locked():
            old = self.csv.read_bytes() if self.csv.exists() else b""
            header = old.split(b"\n", 1)[0].decode(errors="replace")
            columns = next(csv.reader([header]), []) if old.strip() else []
            if columns != list(COLUMNS):
                old, columns = self._migrated(old, columns)
            if old and not old.endswith(b"\n"):
                old += b"\n"
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
            for row in rows:
                record = asdict(row) | {"run_id": run.run_id, "timestamp": timestamp,
                                        "schema": SCHEMA_VERSION} | run.key()
                record["kernels"] = row.kernels or run.kernels
                record["error"] = " ".join(str(record["error"]).split())  # one line
                writer.writerow(record)
            _atomic_write(self.csv.resolve(), old + buffer.getvalue().encode())

    def _migrated(self, old: bytes, columns: list[str]) -> tuple[bytes, list[str]]:
        """The existing rows under a header with every current column, and any unknown ones
        kept after them. Rows written before a column existed get it filled by ``read_csv``."""
        self.schema_check()
        unknown = [c for c in columns if c not in COLUMNS]
        header = list(COLUMNS) + unknown
        if not old.strip():
            return (",".join(header) + "\n").encode(), header
        frame = read_csv(self.csv, keep_unknown=True)
        return frame.to_csv(index=False, columns=header, lineterminator="\n").encode(), header

    def done(self, model: str, measurement: str, run: RunConditions, clip: str,
             required: list[tuple], dataset: str | None = None) -> bool:
        """Whether ok rows already hold every ``(metric, batch[, protocol])`` in ``required``
        for this measurement under these conditions (batch None: any; protocol: the rows'
        protocol must be this; ``dataset``: the rows' dataset, for accuracy). A run killed
        halfway, or one that measured less (``--quick`` skips the CPU RSS probe), is not done."""
        frame = self.frame()
        if frame.empty:
            return False
        key = {"model": model, "measurement": measurement, "clip": clip}
        if dataset is not None:
            key["dataset"] = dataset
        # counted costs are the model's, whatever kernels ran it
        ignore = ("kernels",) if measurement == "cost" else ()
        mask = (frame["status"] == "ok") & under(frame, run, ignore)
        for column, value in key.items():
            mask &= frame[column] == value
        held = frame[mask]
        for metric, batch, *protocol in required:
            rows = held[held["metric"] == metric]
            if batch is not None:
                rows = rows[rows["batch_size"] == batch]
            if protocol:
                rows = rows[rows["protocol"] == protocol[0]]
            if rows.empty:
                return False
        return True

    def frame(self) -> pd.DataFrame:
        return read_csv(self.csv)

    @contextmanager
    def claim(self, model: str, measurement: str, clip: str, dataset: str | None,
              run: RunConditions):
        """Claim a measurement for this process while it runs, so that a second writer on the
        same store does not measure it too. Yields "" when this process holds the claim (it is
        released on exit), or who holds it when another live process does. A claim whose
        process is gone (killed) is taken over."""
        key = json.dumps([model, measurement, clip, dataset or "", run.key()], sort_keys=True)
        path = self.root / ".claims" / hashlib.sha256(key.encode()).hexdigest()[:20]
        holder = _take_claim(path, {"pid": os.getpid(), "host": socket.gethostname(),
                                    "run_id": run.run_id, "since": time.time()})
        try:
            yield holder
        finally:
            if not holder:
                path.unlink(missing_ok=True)

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


CLAIM_EXPIRES_S = 12 * 3600  # no single measurement runs this long: a claim older is stale


def _take_claim(path: Path, me: dict) -> str:
    """"" if this process now holds the claim at ``path``; else who does. The claim file is
    written whole and then hard-linked into place, so another process never reads half a
    claim, and the link fails if a claim is there already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, path)
            return ""
        except FileExistsError:
            holder = _live_holder(path)
            if holder:
                return holder
            path.unlink(missing_ok=True)  # stale: its process is gone
        finally:
            tmp.unlink(missing_ok=True)
    return "a claim that kept changing hands"


def _live_holder(path: Path) -> str:
    """Who holds the claim at ``path``, or "" if nobody does any more (its process died on this
    host, it expired, or it is unreadable)."""
    try:
        info = json.loads(path.read_text())
        pid, host, since = int(info["pid"]), str(info["host"]), float(info["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if time.time() - since > CLAIM_EXPIRES_S:
        return ""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass  # alive, another user's
    return f"run {info.get('run_id', '?')}, pid {pid} on {host}"


def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, damaged line numbers). A damaged row, whose field count is not the
    header's (a truncated copy, a write another tool cut short), is skipped and reported by its
    line number (1-based); nothing rewrites it away."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            rows, bad = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) == len(header):
                    rows.append(row)
                else:
                    bad.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StoreError(f"{path} cannot be read as a results store: {exc}") from None
    return header, rows, bad


def read_csv(path: Path, keep_unknown: bool = False) -> pd.DataFrame:
    """Every readable row, typed, with columns a store written before them lacked filled in;
    ``keep_unknown``: as read (strings), with any columns this version does not know."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    if not path.is_file():
        raise StoreError(f"{path} is not a file")
    header, rows, bad = read_rows(path)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} damaged row(s) at line {shown}", stacklevel=2)
    frame = pd.DataFrame(rows, columns=header)
    # stores written before a column existed: fill it in, the machine from the run's sidecar
    for column in ("device_name", "threads"):
        if column not in frame.columns:
            frame[column] = [str(_run_environment(path.parent, run).get(column, ""))
                             for run in frame["run_id"]]
    if "protocol" not in frame.columns and "note" in frame.columns:
        frame["protocol"] = [n.removeprefix("protocol: ") if n.startswith("protocol: ") else ""
                             for n in frame["note"]]
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    frame["kernels"] = frame["kernels"].fillna("").replace("", "stock")  # before the column: stock
    unknown = [c for c in frame.columns if c not in COLUMNS]
    frame = frame[list(COLUMNS) + (unknown if keep_unknown else [])]
    if keep_unknown:  # for rewriting: every value exactly as it was read
        return frame
    for column in ("channels_last", "compiled"):
        frame[column] = frame[column].astype(str) == "True"
    for column in ("value", "iqr", "repeats"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("batch_size", "epoch", "seed", "threads", "schema"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def _run_environment(root: Path, run_id: str) -> dict:
    """A run's sidecar; ``{}`` when it is missing or damaged (a damaged sidecar loses its run's
    environment columns, never the run's rows)."""
    path = root / "runs" / f"{run_id}.json"
    if not path.exists():
        return {}
    try:
        env = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable environment ({type(exc).__name__}); its run's rows "
                      "are shown without it", stacklevel=2)
        return {}
    return env if isinstance(env, dict) else {}


def load_results(root: str | os.PathLike = "results") -> pd.DataFrame:
    """Every row, joined with its run's environment (columns prefixed ``env_``)."""
    root = Path(root)
    frame = read_csv(root / CSV_NAME)
    envs = []
    for path in sorted((root / "runs").glob("*.json")):
        env = _run_environment(root, path.stem)
        if env:
            envs.append({"run_id": path.stem} | {f"env_{k}": v for k, v in env.items()})
    if envs and not frame.empty:
        frame = frame.merge(pd.DataFrame(envs), on="run_id", how="left")
    return frame


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time plus a random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def _atomic_write(path: Path, data: bytes) -> None:
    """Write a temp file beside ``path`` and rename it over ``path``; the temp file is removed
    whatever happens (a full disk included)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
