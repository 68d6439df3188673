"""The store's files read and written: the CSV of rows (damaged lines skipped and reported, never
rewritten away), each run's environment sidecar, and atomic replaces."""

import csv
import json
import os
import uuid
import warnings
from pathlib import Path

import pandas as pd

from benchmarks.store.records import COLUMNS, CSV_NAME


class StoreError(OSError):
    """A store that cannot be read or written safely; the message is one line."""


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


def atomic_write(path: Path, data: bytes) -> None:
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
