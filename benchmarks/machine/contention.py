"""Was the machine shared while we measured? CPU time other processes used, as it happened.

A peak check before and after a timing misses a steady load: another CPU-bound program that
runs all along halves every rate and keeps the timings' IQR small, so nothing looks noisy. The
kernel counts it, though. ``CpuMeter`` reads ``/proc/stat`` (busy time of the CPUs this process
may run on, including a VM's steal time) and the CPU time of this process and its children
(``/proc/<pid>/stat``) at the start and end of an interval; the difference is what others used.

A timing is **disturbed** when others used more CPU than the cores this process leaves idle,
by more than ``DISTURBED_SHARE`` of the threads it runs: on a 2-core host timing with 2
threads, another program using a tenth of a core and more. Not Linux: nothing is measured
and nothing is flagged (``Contention.known`` is False).
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DISTURBED_SHARE = 0.10  # others' CPU beyond our idle cores, as a share of our threads
# /proc/stat columns: user nice system idle iowait irq softirq steal (guest is inside user)
_BUSY = (0, 1, 2, 5, 6, 7)
_STEAL = 7


@dataclass(frozen=True)
class Contention:
    """Over ``seconds`` of wall-clock: CPUs' worth of time used by other processes, of it
    stolen by the hypervisor, on ``cpus`` CPUs while this process ran ``threads`` threads."""

    others: float
    steal: float
    seconds: float
    cpus: int
    threads: int
    known: bool = True

    @property
    def contended(self) -> float:
        """Share of our threads' CPUs that others took: their use beyond our idle cores."""
        idle = max(0, self.cpus - self.threads)
        return max(0.0, self.others - idle) / max(1, self.threads)

    @property
    def disturbed(self) -> bool:
        return self.known and self.contended > DISTURBED_SHARE

    def describe(self) -> str:
        if not self.known:
            return "machine load not measured (no /proc)"
        steal = f", {self.steal:.2f} of it stolen by the hypervisor" if self.steal >= 0.01 else ""
        return (f"other processes used {self.others:.2f} of {self.cpus} CPUs{steal} over "
                f"{self.seconds:.0f} s, with {self.threads} threads of ours")


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, steal) clock ticks summed over ``cpus`` since boot; None without /proc."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = steal = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields]
            busy += sum(values[i] for i in _BUSY if i < len(values))
            steal += values[_STEAL] if len(values) > _STEAL else 0
    return busy, steal


def _process_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and of its children it has reaped (cutime + cstime), in clock
    ticks (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return sum(int(v) for v in fields[11:15])  # fields 14 to 17 of proc(5)


def _descendants(pid: int) -> list[int]:
    """Every living process below ``pid``: the children of each of its threads, and theirs."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _own_ticks() -> int:
    """CPU ticks of this process and every process below it, living or reaped: data-loader
    workers, probes, and torch.compile's compile workers (a pool started from another thread,
    whose workers start their own), which once read as another program's load."""
    me = os.getpid()
    return _process_ticks(me) + sum(_process_ticks(pid) for pid in _descendants(me))


class CpuMeter:
    """``with CpuMeter() as meter: ...`` then ``meter.result`` (a ``Contention``)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or torch.get_num_threads()
        self.cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.result: Contention | None = None

    def __enter__(self) -> "CpuMeter":
        self._start = (time.perf_counter(), _cpu_ticks(self.cpus), _own_ticks())
        return self

    def __exit__(self, *exc) -> None:
        self.result = self.read()

    def read(self) -> Contention:
        """What others used from the start until now."""
        started, machine0, own0 = self._start
        seconds, machine1 = time.perf_counter() - started, _cpu_ticks(self.cpus)
        cpus = max(1, len(self.cpus))
        if machine0 is None or machine1 is None or seconds <= 0:
            return Contention(0.0, 0.0, seconds, cpus, self.threads, known=False)
        return contention(machine0, machine1, own0, _own_ticks(), seconds, cpus, self.threads)


def contention(machine0: tuple[int, int], machine1: tuple[int, int], own0: int, own1: int,
               seconds: float, cpus: int, threads: int,
               hz: int | None = None) -> Contention:
    """The arithmetic of ``CpuMeter``, from two readings of (busy, steal) and own ticks."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    busy = (machine1[0] - machine0[0]) / hz
    steal = (machine1[1] - machine0[1]) / hz
    own = (own1 - own0) / hz
    # the kernel's tick sampling can credit a tick to us that /proc/stat gave to another CPU:
    # clamp at zero rather than report a negative load
    return Contention(max(0.0, (busy - own) / seconds), max(0.0, steal / seconds), seconds,
                      cpus, threads)
