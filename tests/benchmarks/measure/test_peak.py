"""The machine's peak (benchmarks/measure/peak.py): the full-size problem in every dtype the device
runs natively; a dtype a CPU emulates gets a problem fitted once, used at both ends of a run."""

import time

import pytest

from benchmarks.machine import environment
from benchmarks.measure import peak


@pytest.fixture(autouse=True)
def fresh_fit():
    peak.fitted_problem.cache_clear()
    yield
    peak.fitted_problem.cache_clear()


def test_a_natively_run_dtype_is_timed_at_full_size_whatever_one_small_call_predicts(monkeypatch):
    assert peak.fitted_problem("cpu", "fp32") == (*peak.peak_problem("cpu"), "")
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA", "AVX-512F", "AVX512-BF16"])
    assert peak.runs_natively("cpu", "bf16") and not peak.runs_natively("cpu", "fp16")
    assert peak.fitted_problem("cpu", "bf16") == (*peak.peak_problem("cpu"), "")
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA"])
    assert not peak.runs_natively("cpu", "bf16")
    assert peak.runs_natively("cuda", "fp16")


def test_an_emulated_dtype_is_fitted_from_calls_of_growing_size_and_fitted_once(monkeypatch):
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA"])  # bf16 emulated
    calls = []
    real = peak._largest_fitting
    monkeypatch.setattr(peak, "_largest_fitting", lambda *a: calls.append(a[0]) or real(*a))
    started = time.perf_counter()
    side, shape, note = peak.fitted_problem("cpu", "bf16")
    assert time.perf_counter() - started < 10
    assert side in peak.MATMUL_SIDES and shape in peak.CONV_INPUTS
    assert (note == "") == ((side, shape) == peak.peak_problem("cpu"))
    if note:
        assert f"{side}^3 matmul" in note and "x".join(map(str, shape)) in note and "emulated" in note
    assert peak.fitted_problem("cpu", "bf16") == (side, shape, note) and len(calls) == 2  # once a process


def test_the_fit_predicts_from_the_largest_size_timed_not_the_smallest(monkeypatch):
    """A fixed overhead per call dominates a tiny problem: scaled up, it once predicted 30 s for a
    2048^3 fp32 matmul that takes 0.12 s. Here each call costs 10 ms plus 1 ns a multiply-add."""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def step_for(side):
        def step():
            clock[0] += 1e-2 + side**3 * 1e-9
        return step

    monkeypatch.setattr(peak, "PEAK_CALL_S", 2.0)
    # 2048^3 costs 8.6 s, 1024^3 1.08 s: the largest that fits is 1024; the smallest call alone
    # (12.1 ms for 128^3) would have predicted 1024^3 at 6.2 s and settled for 512
    assert peak._largest_fitting(peak.MATMUL_SIDES, step_for, lambda s: s**3) == 1024


def test_a_half_precision_peak_on_a_cpu_fits_the_runs_time():
    started = time.perf_counter()
    rates, note = peak.peak_with_note("cpu", "fp16", min_run_time=0.2, warm_s=0.2)
    assert time.perf_counter() - started < 30 and min(rates.values()) > 0
    side, shape, _ = peak.fitted_problem("cpu", "fp16")
    assert (note == "") == ((side, shape) == peak.peak_problem("cpu"))
