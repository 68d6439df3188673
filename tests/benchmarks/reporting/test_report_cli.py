"""``report.py`` from the shell: what it cannot make a report of is one line and exit 2."""

import subprocess
import sys

import pytest

from benchmarks.store import Measurement, ResultsStore, RunConditions
from tests.paths import REPO

pytestmark = pytest.mark.slow  # report.py in a process of its own


def test_report_on_error_rows_only_or_a_file_as_out_is_one_line(tmp_path):
    store = ResultsStore(tmp_path / "r")
    store.append([Measurement("mfnet", "cost", "error", None, "", status="error", error="boom")],
                 RunConditions("r", "cpu", "x", "fp32", "ncdhw", False, 2),
                 "2026-01-01T00:00:00+00:00")
    for args, message in ((["--results", str(tmp_path / "r"), "--out", str(tmp_path / "o")], "no ok"),
                          (["--results", str(tmp_path / "r"), "--out", str(store.csv)], "not a folder")):
        proc = subprocess.run([sys.executable, "benchmarks/report.py", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0
