"""Was a timing disturbed? The machine watched around each model's timing.

Two signs, both recorded in the rows they mark:
- **others' CPU time** during the timing (``contention.CpuMeter``): a steady load that halves
  every rate shows here even when it keeps the IQR small;
- **the machine's dense peak** just before and just after the timing, both under
  ``BUSY_SHARE`` of the best peak of the run: a throttled or migrated VM, a load the meter
  cannot see (another VM on the same host).

A disturbed row's note starts with ``disturbed:`` and says why; the run prints a warning and the
report marks the value and refuses a wall-clock verdict from it.
"""

from collections.abc import Callable
from dataclasses import replace

from benchmarks.machine.contention import Contention, CpuMeter
from benchmarks.store import Measurement

# A peak below this share of the run's best means the machine was busy: a 2-core host sharing
# its cores with one other CPU-bound job ran at about half its peak.
BUSY_SHARE = 0.75
MARK = "disturbed"


def reasons(contention: Contention | None, before: float | None, after: float | None,
            best: float | None) -> list[str]:
    """Why a timing is not to be trusted, from what was seen around it ([] if it is)."""
    found = []
    if contention is not None and contention.disturbed:
        found.append(contention.describe())
    seen = [p for p in (before, after) if p is not None]
    # both low: one brief reading can dip on its own (run-to-run noise here is 10-30%)
    if seen and best and max(seen) < BUSY_SHARE * best:
        found.append(f"the machine's peak was {before or 0:.0f} GMAC/s before and "
                     f"{after or 0:.0f} after, against {best:.0f} at best in this run")
    return found


def mark(rows: list[Measurement], why: list[str]) -> list[Measurement]:
    """``rows`` with ``disturbed: <why>`` leading their notes (unchanged if ``why`` is empty)."""
    if not why:
        return rows
    text = f"{MARK}: " + "; ".join(why)
    return [replace(row, note=f"{text}; {row.note}" if row.note else text) for row in rows]


def is_disturbed(note: str) -> bool:
    return str(note).startswith(MARK)


class MachineWatch:
    """Runs each model's timing between two brief peak checks, with the CPU meter on.
    ``brief_peak``: the machine's peak measured in a fraction of a second (None: not checked,
    as with ``--quick``, where a second of peak per model is its time)."""

    def __init__(self, start_peak: float, brief_peak: Callable[[], float] | None = None):
        self.best, self._brief_peak = start_peak, brief_peak

    def brief_peak(self) -> float | None:
        return None if self._brief_peak is None else self._brief_peak()

    def timed(self, measure: Callable[[], list[Measurement]]) -> list[Measurement]:
        before = self.brief_peak()
        with CpuMeter() as meter:
            rows = measure()
        after = self.brief_peak()
        self.best = max(p for p in (self.best, before, after) if p is not None)
        return mark(rows, reasons(meter.result, before, after, self.best))
