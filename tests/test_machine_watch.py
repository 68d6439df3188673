"""Results that stay true on a busy, small or shared machine: the CPU meter, the peak around
each timing, the memory guard, memory given back between models, and two writers on one store."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import contention, disturbance, environment, memory, report, run, runtime, speed
from benchmarks.results import Measurement, ResultsStore, RunConditions, read_csv

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--clip", "4,32,32", "--batch-size", "2", "--quick"]


def loaded(others: float, seconds: float = 3.0) -> type:
    """A CPU meter that reads ``others`` CPUs of another program's load on 2 CPUs."""
    class Loaded(contention.CpuMeter):
        def read(self):
            return contention.Contention(others, 0.0, seconds, 2, 2)
    return Loaded


def busy_probes(monkeypatch) -> None:
    """Every probe under a whole CPU of someone else's load, at 5 clips/s and a 50 GMAC/s peak."""
    from benchmarks import train

    monkeypatch.setattr(run, "CpuMeter", loaded(1.0))
    monkeypatch.setattr(speed, "peak_gmacs_per_s", lambda *a, **k: {"conv": 50.0})
    monkeypatch.setattr(train, "probe_rate", lambda cfg, seconds: 5.0)


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


def rows():
    return [Measurement("m", "speed", "latency_ms", 10.0, "ms", note="noisy: IQR/median 12%"),
            Measurement("m", "speed", "gmacs_per_s", 5.0, "GMAC/s")]


def test_a_peak_that_dropped_around_a_timing_marks_its_rows(monkeypatch):
    peaks = iter([60.0, 50.0,  # before, after: low both times
                  50.0, 99.0,  # one brief reading dipped: noise, not a load
                  98.0, 99.0])
    monkeypatch.setattr(disturbance.MachineWatch, "brief_peak", lambda self: next(peaks))
    watch = disturbance.MachineWatch("cpu", "fp32", start_peak=100.0)
    marked = watch.timed(rows)
    assert all(disturbance.is_disturbed(r.note) for r in marked)
    assert "60 GMAC/s before and 50 after, against 100" in marked[0].note
    assert marked[0].note.endswith("noisy: IQR/median 12%")
    for _ in range(2):
        assert not any(disturbance.is_disturbed(r.note) for r in watch.timed(rows))


def test_a_steady_load_marks_a_timing_even_with_a_steady_peak(monkeypatch):
    monkeypatch.setattr(disturbance, "CpuMeter", loaded(1.0))
    marked = disturbance.MachineWatch("cpu", "fp32", 100.0, brief_peaks=False).timed(rows)
    assert marked[1].note.startswith("disturbed: other processes used 1.00 of 2 CPUs")


def test_run_py_marks_disturbed_speed_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(disturbance, "CpuMeter", loaded(0.9, seconds=2.0))
    code = run.main(["--models", "res3d", "--measure", "speed", "--results", str(tmp_path), *SMALL])
    assert code == 0 and "is disturbed: other processes used 0.90 of 2 CPUs" in capsys.readouterr().out
    frame = read_csv(tmp_path / "measurements.csv")
    timed = frame[(frame["measurement"] == "speed") & (frame["model"] != "_machine")]
    assert len(timed) == 9 and timed["note"].map(disturbance.is_disturbed).all()


def test_the_report_marks_disturbed_timings_and_refuses_their_verdict(tmp_path):
    disturbed = "disturbed: other processes used 0.90 of 2 CPUs over 2 s, with 2 threads of ours"
    rows = [Measurement(name, "speed", "latency_ms", ms, "ms", "infer", 1, run.clip_label(name, None),
                        note=disturbed) for name, ms in (("mfnet", 100.0), ("r2plus1d", 900.0))]
    rows += [Measurement(name, "cost", "gmacs", g, "GMAC", clip=run.clip_label(name, None))
             for name, g in (("mfnet", 11.1), ("r2plus1d", 152.0))]
    ResultsStore(tmp_path).append(rows, conditions(), "2026-01-01T00:00:00+00:00")
    report.render(tmp_path, tmp_path / "report")
    text = (tmp_path / "report" / "README.md").read_text()
    claim = next(line for line in text.splitlines() if "| wall-clock |" in line)
    assert "not judged: timed while the machine was shared" in claim and "⚠" in claim
    assert "100.0 ⚠" in text and "Timed while the machine was shared" in text


def test_every_probe_under_load_flags_the_clip_budgets(tmp_path, monkeypatch):
    busy_probes(monkeypatch)
    args = run.parse_args(["--models", "mfnet,c3d", "--measure", "accuracy", "--train-budget", "4",
                           "--results", str(tmp_path)])  # a fresh store: nothing recorded to compare
    args.probes = run.probe_phase(["mfnet", "c3d"], args)
    args.conditions = RunConditions("r", "cpu", "Test CPU", "fp32", False, False, 2)
    clips, note = run.clip_budget("mfnet", args)
    assert clips == 20 and note.startswith("busy machine: during every probe other processes used 1.00")


# ---- memory ----

def test_the_estimate_covers_every_measured_peak_rss_in_the_committed_store():
    frame = read_csv(REPO / "results" / "measurements.csv")
    grown = frame[(frame["metric"] == "peak_rss_mb_train") & (frame["status"] == "ok")]
    grown = grown[grown["model"].isin(["mfnet", "i3d", "r2plus1d", "s3d", "res3d", "c3d", "x3d_m"])]
    assert len(grown) >= 5
    for row in grown.itertuples():
        clip = tuple(int(v) for v in row.clip.split("x"))
        estimate = memory.estimate_bytes(row.model, clip, int(row.batch_size), "train") / memory.MB
        # never under; over by at most what a model with large dense layers (C3D) costs
        assert row.value <= estimate <= 2.5 * row.value + 512, row.model


def test_a_step_that_would_not_fit_is_an_error_row_naming_both_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (int(0.6 * 2**30), "a test's cgroup"))
    code = run.main(["--models", "mfnet", "--measure", "speed", "--results", str(tmp_path),
                     "--clip", "16,112,112", "--batch-size", "4", "--quick"])
    frame = read_csv(tmp_path / "measurements.csv")
    assert code == 1
    short = frame[frame["status"] == "error"]
    assert short["metric"].tolist() == ["train_clips_per_s"]
    error = short["error"].iloc[0]
    assert "needs about" in error and "0.6 GB is available (a test's cgroup)" in error
    # inference fitted: measured, not lost with the training step
    assert {"latency_ms", "infer_clips_per_s"} <= set(frame[frame["status"] == "ok"]["metric"])


def test_the_rss_probe_is_skipped_when_its_child_would_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (int(0.5 * 2**30), "test"))
    monkeypatch.setattr(memory, "cpu_peak_rss_growth", lambda *a, **k: pytest.fail("started the child"))
    assert run.main(["--models", "mfnet", "--measure", "memory", "--results", str(tmp_path),
                     "--clip", "16,112,112"]) == 1
    frame = read_csv(tmp_path / "measurements.csv")
    assert frame.set_index("metric")["status"].to_dict() == {
        "activation_mb": "ok", "peak_rss_mb_train": "error", "job_peak_rss_mb": "ok"}


def test_the_room_under_a_cgroup_limit_counts_reclaimable_cache(tmp_path):
    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text(str(6 * 2**30))
    (tmp_path / "memory.stat").write_text(f"anon 1\nactive_file {2**29}\ninactive_file {2**29}\n")
    assert memory._room(tmp_path, *memory.CGROUP_V2) == 3 * 2**30
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._room(tmp_path, *memory.CGROUP_V2) is None
    room, source = memory.available_bytes()  # this machine's, whatever it is
    assert room is None or room > 0 and source


@pytest.mark.parametrize("target, expected", [(os.abort, "killed by signal 6"),
                                              (time.sleep, "exited with status 0")])
def test_a_dead_rss_probe_child_is_an_error_at_once(target, expected):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(0,) if target is time.sleep else ())
    process.start()
    started = time.perf_counter()
    status, message = memory._answer(process, queue, timeout_s=900)
    process.join()
    assert status == "error" and expected in message
    assert time.perf_counter() - started < 30  # not the 900 s timeout


def test_memory_freed_by_one_model_goes_back_before_the_next():
    script = """
import torch
from benchmarks import memory, runtime
runtime.keep_freed_memory()
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
x = torch.ones(300 * 2**20 // 4)  # 300 MB, kept in the heap after it is freed
del x
held = rss()
assert runtime.give_back_memory()
print(held, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    held, after = map(int, out)
    assert held - after > 200  # MB handed back


def test_a_run_records_its_own_peak_rss(tmp_path):
    assert run.main(["--models", "res3d", "--measure", "cost", "--results", str(tmp_path), *SMALL]) == 0
    frame = read_csv(tmp_path / "measurements.csv")
    job = frame[frame["metric"] == "job_peak_rss_mb"]
    assert len(job) == 1 and job["value"].iloc[0] > 100  # MB: torch alone is more


# ---- two writers, conditions ----

def conditions(run_id="r"):
    return RunConditions(run_id, "cpu", "x", "fp32", False, False, 2)


def test_a_claim_held_by_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    key = ("mfnet", "speed", "16x224x224", None)
    with store.claim(*key, conditions("a")) as mine:
        assert mine == ""
        with ResultsStore(tmp_path).claim(*key, conditions("b")) as other:
            assert other.startswith("run a, pid")  # this process is alive
    assert not list((tmp_path / ".claims").iterdir())  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.claim(*key, conditions("a")):
        claim = next((tmp_path / ".claims").iterdir())
        info = json.loads(claim.read_text()) | {"pid": dead.pid}
        claim.write_text(json.dumps(info))  # as if its run had been killed
    claim.write_text(json.dumps(info))
    with store.claim(*key, conditions("c")) as again:
        assert again == ""


SLOW_MODELS = """
import time
from torch import nn
import models

def slow(*, num_classes=2, **kwargs):
    time.sleep(0.7)  # every build: a measurement long enough for two writers to overlap
    return nn.Sequential(nn.Conv3d(3, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, num_classes))

register = models.register_model(input_shape=(3, 4, 32, 32), num_classes=2, display_name="slow")


def named(name):
    def build(**kwargs):
        return slow(**kwargs)
    build.__name__ = name  # the registry names a model after its builder
    return build


for name in ("slow_a", "slow_b", "slow_c", "slow_d"):
    register(named(name))
"""


def test_two_writers_on_one_store_measure_each_model_once(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_MODELS)
    argv = [sys.executable, "benchmarks/run.py", "--import", str(tmp_path / "slow.py"),
            "--models", "slow_a,slow_b,slow_c,slow_d", "--measure", "cost", "--quick",
            "--results", str(tmp_path / "store")]
    writers = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    frame = read_csv(tmp_path / "store" / "measurements.csv")
    params = frame[frame["metric"] == "params"]
    assert sorted(params["model"]) == ["slow_a", "slow_b", "slow_c", "slow_d"]  # once each


def test_a_cpu_with_another_instruction_set_is_another_machine(monkeypatch):
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX2")
    avx2 = environment.device_name("cpu")
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX512")
    assert avx2.endswith("(AVX2)") and environment.device_name("cpu") != avx2


def test_a_half_precision_peak_on_a_cpu_fits_the_runs_time():
    started = time.perf_counter()
    rates, note = speed.peak_with_note("cpu", "fp16", min_run_time=0.2, warm_s=0.2)
    assert time.perf_counter() - started < 30 and min(rates.values()) > 0
    side, shape, _ = speed.fitted_problem("cpu", "fp16")
    assert (note == "") == ((side, shape) == speed.peak_problem("cpu"))


def test_give_back_memory_is_called_between_models(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "give_back_memory", lambda: calls.append(1))
    assert run.main(["--models", "res3d,mfnet", "--measure", "cost", "--results", str(tmp_path),
                     "--clip", "8,32,32", "--quick"]) == 0
    assert len(calls) == 2


def test_a_busy_probe_phase_is_said_in_the_output(tmp_path, monkeypatch, capsys):
    from benchmarks import train

    busy_probes(monkeypatch)
    budgets = []
    monkeypatch.setattr(train, "train", lambda cfg: budgets.append((cfg.clip_budget, cfg.budget_note)))
    assert run.main(["--models", "mfnet", "--measure", "accuracy", "--train-budget", "4",
                     "--results", str(tmp_path)]) == 0
    assert "warning: busy machine: during every probe other processes used 1.00" in capsys.readouterr().out
    assert budgets[0][0] == 20 and budgets[0][1].startswith("busy machine")
