"""Was a timing disturbed? (benchmarks/machine/disturbance.py): the machine's peak before and
after a timing, and other processes' CPU time during it, mark the rows they concern."""

from benchmarks.machine import contention, disturbance
from benchmarks.store import Measurement


def loaded(others: float, seconds: float = 3.0) -> type:
    """A CPU meter that reads ``others`` CPUs of another program's load on 2 CPUs."""
    class Loaded(contention.CpuMeter):
        def read(self):
            return contention.Contention(others, 0.0, seconds, 2, 2)
    return Loaded


def rows():
    return [Measurement("m", "speed", "latency_ms", 10.0, "ms", note="noisy: IQR/median 12%"),
            Measurement("m", "speed", "gmacs_per_s", 5.0, "GMAC/s")]


def test_a_peak_that_dropped_around_a_timing_marks_its_rows(monkeypatch):
    peaks = iter([60.0, 50.0,  # before, after: low both times
                  50.0, 99.0,  # one brief reading dipped: noise, not a load
                  98.0, 99.0])
    monkeypatch.undo()  # the quiet machine every other test sees
    watch = disturbance.MachineWatch(100.0, brief_peak=lambda: next(peaks))
    marked = watch.timed(rows)
    assert all(disturbance.is_disturbed(r.note) for r in marked)
    assert "60 GMAC/s before and 50 after, against 100" in marked[0].note
    assert marked[0].note.endswith("noisy: IQR/median 12%")
    for _ in range(2):
        assert not any(disturbance.is_disturbed(r.note) for r in watch.timed(rows))


def test_a_steady_load_marks_a_timing_even_with_a_steady_peak(monkeypatch):
    monkeypatch.setattr(disturbance, "CpuMeter", loaded(1.0))
    marked = disturbance.MachineWatch(100.0).timed(rows)
    assert marked[1].note.startswith("disturbed: other processes used 1.00 of 2 CPUs")
