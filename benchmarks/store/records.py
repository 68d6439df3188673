"""What the store holds: one ``Measurement`` per number, the conditions of the run that measured
it (``RunConditions``), and the columns of its CSV file (schema in ``results/README.md``)."""

import datetime as dt
import uuid
from dataclasses import dataclass

import pandas as pd

# Version 2 added weights, seed, threads, protocol and schema; version 3 added kernels; version 4
# added runtime; version 5 added layout. Every row records the version that wrote it; a store holding rows of a newer
# version is refused, never rewritten.
SCHEMA_VERSION = 5
COLUMNS = ("run_id", "timestamp", "model", "measurement", "metric", "value", "unit", "phase",
           "device", "device_name", "dtype", "batch_size", "clip", "layout", "channels_last",
           "compiled", "kernels", "runtime", "iqr", "repeats", "dataset", "epoch", "views", "status", "error", "note",
           "weights", "seed", "threads", "protocol", "schema")
# The columns every store has had from its first version: one missing from a store's header is a
# renamed or damaged header, refused rather than filled with blanks (rows would read as ok and
# empty, their numbers in a column nothing reads)
CORE_COLUMNS = ("run_id", "timestamp", "model", "measurement", "metric", "value", "unit", "phase", "device",
                "dtype", "batch_size", "clip", "status", "error", "note")
# What makes two rows the same measurement, beside the model, metric, phase, batch and clip:
# where and how it ran. Resume (``ResultsStore.done``), the summaries and the report use it.
CONDITION_COLUMNS = ("device", "device_name", "threads", "dtype", "layout", "compiled", "kernels",
                     "runtime")
# kernels: "stock" (PyTorch's own, run.py --fiber-kernel stock) or "suite": grouped (1|3)x3x3
# convs, and with them BatchNorm + ReLU and pointwise convs, on the suite's kernels (models/kernels)
# where they apply, the default. runtime: eager | compile | onnxruntime | openvino | tensorrt
# (benchmarks/runtimes); rows written before the column read as eager, or compile where compiled.
# layout: the one asked for, "best" (run.py's default: each model on its fastest path, the layout
# and, unless --fiber-kernel says, the kernels, ``benchmarks/measure/path.py``), "ncdhw" or
# "channels_last"; a row's channels_last and kernels columns say what it ran. Rows written before
# the column read as the layout their channels_last column says.
LAYOUTS = ("best", "ncdhw", "channels_last")
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
    # accuracy rows: how long every model trained ("equal time, 60 s" or "equal epochs, 6")
    protocol: str = ""
    # the row's own kernels condition, in a run that times two against each other
    # (``run.py --fiber-kernel paired``); blank: the run's
    kernels: str = ""
    # the layout the row ran in, where the run's layout is "best"; None: the run's
    channels_last: bool | None = None


@dataclass(frozen=True)
class RunConditions:
    """The conditions of every row a run writes (``CONDITION_COLUMNS``), and its id."""

    run_id: str
    device: str
    device_name: str  # CPU or GPU model: a fresh clone on another machine measures anew
    dtype: str
    layout: str  # LAYOUTS
    compiled: bool
    # intra-op threads: a 64-thread host must not take a 2-thread host's timings as its own
    # (0: not recorded, in rows written before the column existed and not filled from a sidecar)
    threads: int = 0
    kernels: str = "stock"
    runtime: str = "eager"

    @property
    def channels_last(self) -> bool:
        return self.layout == "channels_last"

    def key(self) -> dict:
        return {column: getattr(self, column) for column in CONDITION_COLUMNS}


def under(frame: pd.DataFrame, run: RunConditions, ignore: tuple[str, ...] = ()) -> pd.Series:
    """The rows measured under ``run``'s conditions, but for the columns in ``ignore``."""
    mask = pd.Series(True, index=frame.index)
    for column, value in run.key().items():
        if column not in ignore:
            mask &= frame[column] == value
    return mask


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time plus a random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


