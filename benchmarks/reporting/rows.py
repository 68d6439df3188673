"""Which rows the report reads: the newest ok row per model, metric and conditions, and lookups
into one device's rows at each model's paper input (``Measured``)."""

import pandas as pd

import models
from benchmarks.machine import disturbance
from benchmarks.reporting.format import fmt
from benchmarks.store import CONDITION_COLUMNS

KEY = ["model", "metric", "phase", "batch_size", *CONDITION_COLUMNS, "clip", "dataset", "epoch",
       "protocol"]

# counted, not timed: the same on any machine, so taken from whichever run has them
DEVICE_INDEPENDENT = {"cost"}

DEVICE_INDEPENDENT_METRICS = {"activation_mb"}

# the layouts of the default path: "best" (each model in its faster layout), and from stores
# written before it, NCDHW; a model's "best" rows are preferred where it has both
DEFAULT_LAYOUTS = ("best", "ncdhw")


def default_path(rows: pd.DataFrame) -> pd.Series:
    """Rows on a default path's layout and not compiled."""
    return rows["layout"].isin(DEFAULT_LAYOUTS) & ~rows["compiled"]


def newest(frame: pd.DataFrame) -> pd.DataFrame:
    """The newest ok row per model, metric and conditions."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["_order"] = range(len(ok))
    return ok.sort_values(["timestamp", "_order"]).drop_duplicates(KEY, keep="last")

def spec_clip(name: str) -> str:
    return "x".join(map(str, models.get_spec(name).input_shape[1:]))

class Measured:
    """Lookups into the newest rows of one machine (fp32, eager) at each model's spec input, on
    each model's default path: its best layout where a run chose one (else NCDHW), and where a run
    timed both kernels conditions (``--fiber-kernel paired``), its suite rows, as MF-Net runs by
    default. Counted metrics come from any machine."""

    def __init__(self, rows: pd.DataFrame, device: str, device_name: str, dtype: str = "fp32"):
        rows = rows[(rows["dtype"] == dtype) & default_path(rows)
                    & (rows["runtime"] == "eager")]
        independent = (rows["measurement"].isin(DEVICE_INDEPENDENT)
                       | rows["metric"].isin(DEVICE_INDEPENDENT_METRICS))
        self.counted = rows[independent]
        self.rows = rows[~independent & (rows["device"] == device)
                         & (rows["device_name"] == device_name)]
        self.device, self.device_name = device, device_name

    def row(self, name: str, metric: str, batch_size: int | None = None) -> pd.Series | None:
        source = self.counted if metric in self.counted["metric"].values else self.rows
        rows = source[(source["model"] == name) & (source["metric"] == metric)]
        if name != "_machine":
            rows = rows[rows["clip"] == spec_clip(name)]
        if batch_size is not None:
            rows = rows[rows["batch_size"] == batch_size]
        if rows.empty:
            return None
        best = rows[rows["layout"] == "best"]
        rows = best if not best.empty else rows
        newest = rows[rows["run_id"] == rows["run_id"].iloc[-1]]
        suite = newest[newest["kernels"] == "suite"]
        return (suite if not suite.empty else newest).iloc[-1]

    def get(self, name: str, metric: str, batch_size: int | None = None) -> float | None:
        """The value, or None where there is none (a row stored ok with no number is none)."""
        row = self.row(name, metric, batch_size)
        return None if row is None or pd.isna(row["value"]) else float(row["value"])

    def disturbed(self, name: str, metric: str, batch_size: int | None = None) -> bool:
        """Whether the row was timed while the machine was shared (``disturbance``)."""
        row = self.row(name, metric, batch_size)
        return row is not None and disturbance.is_disturbed(row["note"])

    def timed(self, name: str, metric: str, batch_size: int | None = None) -> str:
        """A timed value for a table, marked ⚠ when it was timed on a disturbed machine."""
        return fmt(self.get(name, metric, batch_size)) + (
            " ⚠" if self.disturbed(name, metric, batch_size) else "")

    def throughput_batch(self, name: str) -> int | None:
        rows = self.rows[(self.rows["model"] == name) & (self.rows["metric"] == "infer_clips_per_s")]
        return None if rows.empty else int(rows["batch_size"].iloc[-1])

    def runs(self) -> list[str]:
        return sorted(set(self.rows["run_id"]) | set(self.counted["run_id"]))
