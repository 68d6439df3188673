"""The harness's tests see a quiet machine unless they simulate a load themselves: the harness
watches the real machine (other processes' CPU time, its peak around each timing) and marks what
it measured under load, and a test's verdicts must not depend on what else the CI machine runs
(tests/benchmarks/machine/test_contention.py measures the real meter)."""

import pytest

from benchmarks.machine import contention, disturbance
from benchmarks.runner import accuracy


class QuietMeter(contention.CpuMeter):
    def read(self):
        return contention.Contention(0.0, 0.0, 1.0, 2, 2)


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    monkeypatch.setattr(accuracy, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance, "CpuMeter", QuietMeter)
    monkeypatch.setattr(disturbance.MachineWatch, "brief_peak", lambda self: None)
