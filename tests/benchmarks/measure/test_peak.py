"""The machine's peak (benchmarks/measure/peak.py): a half-precision peak on a CPU without native
support is shrunk to fit the run's time, and says so."""

import time

from benchmarks.measure import peak


def test_a_half_precision_peak_on_a_cpu_fits_the_runs_time():
    started = time.perf_counter()
    rates, note = peak.peak_with_note("cpu", "fp16", min_run_time=0.2, warm_s=0.2)
    assert time.perf_counter() - started < 30 and min(rates.values()) > 0
    side, shape, _ = peak.fitted_problem("cpu", "fp16")
    assert (note == "") == ((side, shape) == peak.peak_problem("cpu"))
