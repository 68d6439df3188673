"""The results store at the bottom of the harness: every measured row, with its run's conditions
and environment; nothing else in the harness writes ``results/``."""

from benchmarks.store.files import StoreError, load_results, read_csv, read_rows
from benchmarks.store.records import (
    COLUMNS,
    CONDITION_COLUMNS,
    CSV_NAME,
    LAYOUTS,
    SCHEMA_VERSION,
    Measurement,
    RunConditions,
    new_run_id,
    under,
)
from benchmarks.store.results import ResultsStore

__all__ = ["COLUMNS", "CONDITION_COLUMNS", "CSV_NAME", "LAYOUTS", "SCHEMA_VERSION", "Measurement", "ResultsStore",
           "RunConditions", "StoreError", "load_results", "new_run_id", "read_csv", "read_rows", "under"]
