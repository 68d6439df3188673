"""The results store: one tidy CSV row per measurement, append-only, written atomically.

``results/measurements.csv`` holds every row (schema in ``results/README.md``);
``results/runs/<run_id>.json`` holds each run's environment. ``load_results`` reads both into
one pandas DataFrame for the report.
"""

import csv
import fcntl
import hashlib
import io
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from benchmarks.store.claims import beating, holder, take_claim
from benchmarks.store.files import StoreError, atomic_write, one_line, read_csv, refuse_newer_schema
from benchmarks.store.records import COLUMNS, CSV_NAME, SCHEMA_VERSION, Measurement, RunConditions, under


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
        if self.csv.is_file():
            refuse_newer_schema(read_csv(self.csv), self.csv)

    def remove_environment(self, run_id: str) -> None:
        (self.root / "runs" / f"{run_id}.json").unlink(missing_ok=True)

    def write_environment(self, run_id: str, environment: dict) -> None:
        atomic_write(self.root / "runs" / f"{run_id}.json",
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
                record["channels_last"] = run.channels_last if row.channels_last is None else row.channels_last
                record["error"] = " ".join(str(record["error"]).split())  # one line
                writer.writerow({k: one_line(v) for k, v in record.items()})
            atomic_write(self.csv.resolve(), old + buffer.getvalue().encode())

    def _migrated(self, old: bytes, columns: list[str]) -> tuple[bytes, list[str]]:
        """The existing rows under a header with every current column, and any unknown ones
        kept after them. Rows written before a column existed get it filled by ``read_csv``."""
        self.schema_check()  # reads the store: one whose header lost a column is refused, not rewritten
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
        ignore = ("kernels", "layout") if measurement == "cost" else ()
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
        process is gone (killed) is taken over (``claims.py``)."""
        key = json.dumps([model, measurement, clip, dataset or "", run.key()], sort_keys=True)
        path = self.root / ".claims" / hashlib.sha256(key.encode()).hexdigest()[:20]
        held_by = take_claim(path, holder(run.run_id))
        if held_by:
            yield held_by
            return
        try:
            with beating(path):
                yield ""
        finally:
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


