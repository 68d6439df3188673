"""Other processes' CPU time (benchmarks/machine/contention.py): the meter sees another program's
load on our cores and not our own."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.machine import contention


def busy_loop_elsewhere() -> int:
    """A CPU-bound process that is not ours (reparented to init), as another user's job is."""
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_the_meter_sees_another_programs_cpu_time_and_not_our_own():
    work = torch.randn(512, 512)
    hog = busy_loop_elsewhere()
    try:
        time.sleep(0.3)
        # every core ours, as a timing with one thread per core has it
        with contention.CpuMeter(threads=len(os.sched_getaffinity(0))) as meter:
            until = time.perf_counter() + 1.5
            while time.perf_counter() < until:
                work @ work
    finally:
        os.kill(hog, signal.SIGKILL)
    # the loop takes a whole CPU; the kernel's sampling gives or takes a few ticks
    assert meter.result.known and meter.result.others > 0.5 and meter.result.disturbed


def test_work_in_our_own_process_tree_is_ours_however_deep_and_from_whichever_thread():
    """Workers started from another thread, one of which starts its own, burning CPU (as
    torch.compile's compile workers do), finished or still running: our load, not another
    program's."""
    import threading

    burn = f"{sys.executable} -c 'import time; t = time.process_time() + 1.0\nwhile time.process_time() < t: pass'"
    finished = [sys.executable, "-c", f"import subprocess; subprocess.run({burn!r}, shell=True)"]
    running = []
    with contention.CpuMeter(threads=1) as meter:
        thread = threading.Thread(target=subprocess.run, args=(finished,))
        thread.start()
        thread.join()
        starter = threading.Thread(target=lambda: running.append(
            subprocess.Popen([sys.executable, "-c", "while True: pass"])))
        starter.start()
        starter.join()
        time.sleep(1.0)
    running[0].kill()
    running[0].wait()
    # about 2 CPU-seconds of ours over about 2 s; the kernel's sampling gives or takes a few ticks
    assert meter.result.known and meter.result.others < 0.3, meter.result.describe()


def test_contention_counts_only_what_falls_on_our_cores():
    hz = 100
    # 2 CPUs, 2 threads of ours: 150 busy ticks in 1 s, 100 of them ours -> others 0.5 CPU
    load = contention.contention((0, 0), (150, 0), 0, 100, 1.0, cpus=2, threads=2, hz=hz)
    assert load.others == pytest.approx(0.5) and load.disturbed
    # the same load on 8 CPUs: it fits on the 6 we leave idle
    assert not contention.contention((0, 0), (150, 0), 0, 100, 1.0, cpus=8, threads=2, hz=hz).disturbed
    # a VM's stolen time is another's use too, and says so
    stolen = contention.contention((0, 0), (160, 40), 0, 100, 1.0, cpus=2, threads=2, hz=hz)
    assert stolen.disturbed and "stolen by the hypervisor" in stolen.describe()
    quiet = contention.contention((0, 0), (101, 0), 0, 100, 1.0, cpus=2, threads=2, hz=hz)
    assert not quiet.disturbed
