"""The store's files read and written: the CSV of rows (damaged lines skipped and reported, never
rewritten away), each run's environment sidecar, and atomic replaces."""

import csv
import json
import os
import uuid
import warnings
from pathlib import Path

import pandas as pd

from benchmarks.store.records import COLUMNS, CORE_COLUMNS, CSV_NAME, SCHEMA_VERSION


class StoreError(OSError):
    """A store that cannot be read or written safely; the message is one line."""


def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, damaged line numbers). Every record is one line (the writer makes it so),
    and each line is read on its own: a damaged one (cut short, with a quote left open, a field
    count not the header's, bytes that are not UTF-8) is skipped and reported by its line number
    (1-based), and damage never reaches past its line to hide the rows after it. Nothing rewrites
    a damaged line away."""
    lines = path.read_bytes().split(b"\n")
    header = _parsed(lines[0])
    if header is None:
        raise StoreError(f"{path} cannot be read as a results store: its header line is damaged")
    rows, bad = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = _parsed(line)
        if row is not None and len(row) == len(header):
            rows.append(row)
        else:
            bad.append(number)
    return header, rows, bad


def _parsed(line: bytes) -> list[str] | None:
    """One line's fields, or None where it is damaged."""
    try:
        return next(csv.reader([line.decode("utf-8").removesuffix("\r")], strict=True), [])
    except (UnicodeDecodeError, csv.Error):
        return None


def one_line(value):
    """A field as the store writes it: every record on one line, so damage stays on its line."""
    return " ".join(value.split()) if isinstance(value, str) and ("\n" in value or "\r" in value) else value


def read_csv(path: Path, keep_unknown: bool = False) -> pd.DataFrame:
    """Every readable row, typed, with columns a store written before them lacked filled in;
    ``keep_unknown``: as read (strings), with any columns this version does not know."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    if not path.is_file():
        raise StoreError(f"{path} is not a file")
    header, rows, bad = read_rows(path)
    missing = [c for c in CORE_COLUMNS if c not in header]
    if missing:
        raise StoreError(f"{path}: its header lacks {', '.join(missing)} (renamed or damaged); "
                         "restore it before measuring into or reporting from this store")
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} damaged line(s): {shown}", stacklevel=2)
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
    before = frame["layout"].fillna("") == ""  # before the column: what its channels_last says
    frame.loc[before, "layout"] = (frame.loc[before, "channels_last"].astype(str) == "True").map(
        {True: "channels_last", False: "ncdhw"})
    before = frame["runtime"].fillna("") == ""  # before the column: eager, or compile where compiled
    compiled = frame.loc[before, "compiled"].astype(str) == "True"
    frame.loc[before, "runtime"] = compiled.map({True: "compile", False: "eager"})
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


def refuse_newer_schema(frame: pd.DataFrame, where) -> None:
    """A store written by a newer version of the suite is refused (``StoreError``, one line):
    this version would misread what it does not know, or lose it in a rewrite."""
    newest = pd.to_numeric(frame["schema"], errors="coerce").max() if len(frame) else None
    if newest is not None and pd.notna(newest) and int(newest) > SCHEMA_VERSION:
        raise StoreError(f"{where} was written by a newer version of the suite (schema {int(newest)}, "
                         f"this one reads {SCHEMA_VERSION}); update the checkout")


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
    refuse_newer_schema(frame, root / CSV_NAME)
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
