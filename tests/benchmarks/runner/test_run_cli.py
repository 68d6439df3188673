"""``run.py`` end to end (slow): the results schema, resume and re-runs, failure isolation, the
motion benchmark, Ctrl-C and crashes, the memory guard, disturbed timings, two writers on one
store."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import run
from benchmarks.machine import contention, disturbance, environment, runtime
from benchmarks.measure import cost, memory, peak
from benchmarks.runner import accuracy, sweep
from benchmarks.store import COLUMNS, Measurement, ResultsStore, RunConditions, load_results, read_csv
from models import registry
from models.specs import ModelSpec
from tests.paths import REPO

pytestmark = pytest.mark.slow
TINY = ["--models", "mfnet2d", "--clip", "1,32,32", "--quick", "--batch-size", "2"]
SMALL = ["--clip", "4,32,32", "--batch-size", "2", "--quick"]


def loaded(others: float, seconds: float = 3.0) -> type:
    """A CPU meter that reads ``others`` CPUs of another program's load on 2 CPUs."""
    class Loaded(contention.CpuMeter):
        def read(self):
            return contention.Contention(others, 0.0, seconds, 2, 2)
    return Loaded


def busy_probes(monkeypatch) -> None:
    """Every probe under a whole CPU of someone else's load, at 5 clips/s and a 50 GMAC/s peak."""
    monkeypatch.setattr(accuracy, "CpuMeter", loaded(1.0))
    monkeypatch.setattr(peak, "peak_gmacs_per_s", lambda *a, **k: {"conv": 50.0})
    monkeypatch.setattr(accuracy, "probe_rate", lambda cfg, seconds: 5.0)


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage dump, no traceback
    return err


def test_unwritable_results_directory(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run.main(TINY + ["--results", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert "cannot write results" in err and err.count("\n") == 1


def test_bad_input_from_the_shell_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--models", "nosuchmodel",
                           "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    code = run.main(TINY + ["--results", str(results)])
    return results, code


def test_a_run_writes_the_documented_schema(tiny_run):
    results, code = tiny_run
    assert code == 0
    frame = read_csv(results / "measurements.csv")
    assert tuple(frame.columns) == COLUMNS
    assert set(frame["status"]) == {"ok"}
    metrics = set(frame["metric"])
    assert {"params", "gmacs", "gflops", "activation_mb", "latency_ms",
            "infer_clips_per_s", "train_clips_per_s", "gmacs_per_s", "peak_fraction",
            "peak_gmacs_per_s", "gmacs_fvcore", "gmacs_grouped_conv"} <= metrics
    row = frame[frame["metric"] == "latency_ms"].iloc[0]
    assert row["batch_size"] == 1 and row["clip"] == "32x32" and row["device"] == "cpu"
    assert row["value"] > 0 and row["iqr"] >= 0 and row["repeats"] >= 1
    assert frame[frame["metric"] == "train_clips_per_s"].iloc[0]["batch_size"] == 2
    env = load_results(results)
    assert env["env_torch"].iloc[0] == torch.__version__ and "env_git_commit" in env


def test_gmacs_is_half_of_gflops(tiny_run):
    frame = read_csv(tiny_run[0] / "measurements.csv")
    value = frame.set_index("metric")["value"]
    assert value["gmacs"] == pytest.approx(value["gflops"] / 2)
    assert value["gmacs"] == pytest.approx(cost.count_macs("mfnet2d", (1, 32, 32)).gmacs)


def test_rerun_skips_what_is_measured_and_force_remeasures(tiny_run, capsys):
    results, _ = tiny_run
    before = len(read_csv(results / "measurements.csv"))
    capsys.readouterr()
    assert run.main(TINY + ["--measure", "cost,memory", "--results", str(results)]) == 0
    assert len(read_csv(results / "measurements.csv")) == before
    said = " ".join(capsys.readouterr().out.split())
    assert f"2 measurement(s) were in {results} already under these conditions and were not measured again" in said
    # timings already held: no speed row, and no machine peak without a timing beside it
    sidecars = sorted((results / "runs").iterdir())
    assert run.main(TINY + ["--measure", "speed", "--results", str(results)]) == 0
    assert len(read_csv(results / "measurements.csv")) == before
    # a run that measured nothing leaves no environment sidecar: a clean checkout stays clean
    assert sorted((results / "runs").iterdir()) == sidecars
    assert run.main(TINY + ["--measure", "cost", "--force", "--results", str(results)]) == 0
    after = read_csv(results / "measurements.csv")
    assert (after["metric"] == "params").sum() == 2


def test_an_interrupted_sweep_resumes_without_duplicates(tmp_path):
    args = ["--measure", "cost", "--clip", "8,32,32", "--quick", "--results", str(tmp_path)]
    run.main(["--models", "mfnet"] + args)  # as if killed after the first model
    run.main(["--models", "mfnet,res3d"] + args)
    frame = read_csv(tmp_path / "measurements.csv")
    assert (frame["metric"] == "params").sum() == 2
    assert sorted(frame[frame["metric"] == "params"]["model"]) == ["mfnet", "res3d"]
    assert not list(tmp_path.glob(".*.tmp"))

class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom\nsecond line")


def test_a_failing_model_becomes_an_error_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    spec = ModelSpec("exploding", lambda num_classes=10: Exploding(), (3, 32, 32), 10,
                     "test", "exact", in_paper=False)
    monkeypatch.setitem(registry._REGISTRY, "exploding", spec)
    code = run.main(["--models", "exploding,mfnet2d", "--measure", "cost", "--quick",
                     "--results", str(tmp_path)])
    assert code == 1
    frame = read_csv(tmp_path / "measurements.csv")
    error = frame[frame["model"] == "exploding"]
    assert list(error["status"]) == ["error"] and error["error"].iloc[0] == "RuntimeError: boom"
    assert (frame[frame["model"] == "mfnet2d"]["status"] == "ok").all()
    # the failed measurement is retried on the next run; the good one is not
    monkeypatch.delitem(registry._REGISTRY, "exploding")
    run.main(["--models", "mfnet2d", "--measure", "cost", "--quick", "--results", str(tmp_path)])
    assert (read_csv(tmp_path / "measurements.csv")["metric"] == "params").sum() == 1


def test_accuracy_on_the_motion_benchmark_records_curves_and_equal_time_budgets(tmp_path):
    code = run.main(["--models", "mfnet", "--measure", "accuracy", "--clip", "8,32,32", "--quick",
                     "--train-budget", "2", "--results", str(tmp_path / "results")])
    assert code == 0
    frame = read_csv(tmp_path / "results" / "measurements.csv")
    acc = frame[frame["measurement"] == "accuracy"]
    assert set(acc["dataset"]) == {"motion/v2"} and set(acc["clip"]) == {"8x32x32"}
    assert {"train_top1", "val_top1", "top1_video", "epochs_completed", "clips_seen",
            "train_seconds"} <= set(acc["metric"])
    seconds = acc[acc["metric"] == "train_seconds"]["value"].iloc[0]
    assert 2 <= seconds < 30  # --quick: a smoke test stopped by the clock, not by the epoch count
    assert acc[acc["metric"] == "val_top1"]["epoch"].notna().all()
    # the cost at the benchmark's clip is recorded for the report
    assert not frame[(frame["measurement"] == "cost") & (frame["clip"] == "8x32x32")].empty
    assert set(acc[acc["metric"] == "top1_video"]["note"]) == {"protocol: equal time, 2 s"}
    # the same protocol is not trained again; another protocol (equal epochs) is
    args = ["--models", "mfnet", "--measure", "accuracy", "--clip", "8,32,32", "--quick",
            "--results", str(tmp_path / "results")]
    assert run.main(args + ["--train-budget", "2"]) == 0
    assert len(read_csv(tmp_path / "results" / "measurements.csv")) == len(frame)
    assert run.main(args + ["--epochs", "1"]) == 0
    finals = read_csv(tmp_path / "results" / "measurements.csv").query("metric == 'top1_video'")
    assert sorted(finals["note"]) == ["protocol: equal epochs, 1", "protocol: equal time, 2 s"]


@pytest.mark.gpu
def test_cuda_run_records_peak_memory_and_bf16_speed(tmp_path):
    code = run.main(["--models", "mfnet", "--clip", "8,64,64", "--device", "cuda", "--dtype", "bf16",
                     "--channels-last", "--quick", "--results", str(tmp_path)])
    assert code == 0
    frame = read_csv(tmp_path / "measurements.csv")
    metrics = set(frame["metric"])
    assert {"peak_alloc_mb_infer", "peak_reserved_mb_infer", "peak_alloc_mb_train",
            "peak_reserved_mb_train", "latency_ms"} <= metrics
    assert set(frame[frame["model"] == "mfnet"]["dtype"]) == {"bf16"}
    peak = frame.set_index("metric")["value"]
    assert 0 < peak["peak_alloc_mb_infer"] <= peak["peak_reserved_mb_infer"]


def test_ctrl_c_and_a_crash_each_have_their_status_and_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.Sweep, "run", interrupted)
    assert run.main(["--models", "mfnet", "--measure", "cost", "--results", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().err

    def crashed(*a, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sweep.Sweep, "run", crashed)
    assert run.main(["--models", "mfnet", "--measure", "cost", "--results", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "trace written to" in err
    log = Path(err.split("trace written to ")[1].strip())
    assert "ZeroDivisionError: a bug" in log.read_text()


def test_training_to_a_clip_budget_is_deterministic_and_flags_a_slow_machine(tmp_path, monkeypatch):

    store = ResultsStore(tmp_path)
    conditions = RunConditions("run-0", "cpu", environment.device_name("cpu"), "fp32", "best", False,
                               torch.get_num_threads())
    store.append([Measurement("_machine", "speed", "peak_gmacs_per_s", 100.0, "GMAC/s", "start")],
                 conditions, "2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(accuracy, "probe_rate", lambda cfg, seconds: 10.0)
    args = ["--models", "mfnet", "--measure", "accuracy", "--clip", "8,32,32", "--train-budget", "4",
            "--results", str(tmp_path)]  # not --quick: its smoke test runs by the clock
    for rate in (100.0, 40.0):  # as recorded, then a whole run on a machine at 40% of it
        monkeypatch.setattr(peak, "peak_gmacs_per_s", lambda *a, p=rate, **k: {"conv": p})
        assert run.main(args + ["--force"]) == 0
    rows = read_csv(tmp_path / "measurements.csv")
    budgets = rows[rows["metric"] == "clip_budget"]
    assert budgets["value"].tolist() == [40, 40]
    assert not budgets["note"].iloc[0].startswith("busy") and budgets["note"].iloc[1].startswith("busy")
    top1 = rows[rows["metric"] == "top1_video"]["value"].tolist()
    assert top1[0] == top1[1]  # the same clips, the same numbers: the clock played no part


def test_run_py_marks_disturbed_speed_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(disturbance, "CpuMeter", loaded(0.9, seconds=2.0))
    code = run.main(["--models", "res3d", "--measure", "speed", "--results", str(tmp_path), *SMALL])
    assert code == 0 and "is disturbed: other processes used 0.90 of 2 CPUs" in capsys.readouterr().out
    frame = read_csv(tmp_path / "measurements.csv")
    timed = frame[(frame["measurement"] == "speed") & (frame["model"] != "_machine") & (frame["phase"] != "probe")]
    # res3d, footnote 5's control, is timed on both kernels by default: 9 rows each
    assert len(timed) == 18 and timed["note"].map(disturbance.is_disturbed).all()


def test_a_step_that_would_not_fit_is_an_error_row_naming_both_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (int(0.6 * 2**30), "a test's cgroup"))
    code = run.main(["--models", "mfnet", "--measure", "speed", "--results", str(tmp_path),
                     "--clip", "16,112,112", "--batch-size", "4", "--quick"])
    frame = read_csv(tmp_path / "measurements.csv")
    assert code == 1
    short = frame[frame["status"] == "error"]
    # MF-Net is timed on both kernels by default: a skipped step under each
    assert short["metric"].tolist() == ["train_clips_per_s"] * 2 and set(short["kernels"]) == {"suite", "stock"}
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


def test_a_run_records_its_own_peak_rss(tmp_path):
    assert run.main(["--models", "res3d", "--measure", "cost", "--results", str(tmp_path), *SMALL]) == 0
    frame = read_csv(tmp_path / "measurements.csv")
    job = frame[frame["metric"] == "job_peak_rss_mb"]
    assert len(job) == 1 and job["value"].iloc[0] > 100  # MB: torch alone is more


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


def test_give_back_memory_is_called_between_models(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "give_back_memory", lambda: calls.append(1))
    assert run.main(["--models", "res3d,mfnet", "--measure", "cost", "--results", str(tmp_path),
                     "--clip", "8,32,32", "--quick"]) == 0
    assert len(calls) == 2


def test_a_busy_probe_phase_is_said_in_the_output(tmp_path, monkeypatch, capsys):

    busy_probes(monkeypatch)
    budgets = []
    monkeypatch.setattr(accuracy, "train", lambda cfg: budgets.append((cfg.clip_budget, cfg.budget_note)))
    assert run.main(["--models", "mfnet", "--measure", "accuracy", "--train-budget", "4",
                     "--results", str(tmp_path)]) == 0
    assert "warning: busy machine: during every probe other processes used 1.00" in capsys.readouterr().out
    assert budgets[0][0] == 20 and budgets[0][1].startswith("busy machine")


def test_a_paired_run_times_both_kernels_in_one_process_and_resumes_on_both(tmp_path):
    argv = ["--models", "mfnet", "--clip", "2,32,32", "--quick", "--batch-size", "2",
            "--measure", "speed", "--results", str(tmp_path)]
    assert run.main(argv + ["--fiber-kernel"]) == 0  # the suite's rows alone: not a pair
    assert run.main(argv + ["--fiber-kernel", "paired"]) == 0  # so the pair is measured
    frame = read_csv(tmp_path / "measurements.csv")
    paired = frame[frame["run_id"] == frame["run_id"].iloc[-1]]
    timed = {"latency_ms", "infer_clips_per_s", "train_clips_per_s"}
    for kernels in ("stock", "suite"):
        assert timed <= set(paired[(paired["model"] == "mfnet") & (paired["kernels"] == kernels)]["metric"])
    sidecar = json.loads((tmp_path / "runs" / f"{paired['run_id'].iloc[0]}.json").read_text())
    assert "alternating rounds" in sidecar["speed_kernels"]
    assert run.main(argv + ["--fiber-kernel", "paired"]) == 0  # held under both: nothing new
    assert run.main(argv) == 0  # the default pairs MF-Net too: held as well
    assert len(read_csv(tmp_path / "measurements.csv")) == len(frame)


def test_a_peak_that_runs_out_of_memory_is_an_error_row_and_timings_go_on_without_fractions(monkeypatch):
    from benchmarks.runner import measure as runner_measure
    from benchmarks.runner.options import parse_args

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(peak, "peak_with_note", no_memory)
    monkeypatch.setattr(memory, "available_bytes", lambda: (2**29, "the address-space limit of 4.0 GB, ulimit -v"))
    best, rows = runner_measure.peak_rows(parse_args(["--models", "mfnet", "--measure", "speed"]), "start", None)
    assert best == 0.0 and len(rows) == 1 and rows[0].status == "error"
    assert rows[0].error == ("MemoryError: out of memory (0.5 GB available by the address-space limit of 4.0 GB, "
                             "ulimit -v)")


def test_a_full_disk_at_a_run_s_first_rows_leaves_no_sidecar_without_rows(tmp_path, monkeypatch):
    from benchmarks.runner.options import parse_args
    from benchmarks.runner.sweep import RunWriter
    from benchmarks.store import Measurement, ResultsStore

    store = ResultsStore(tmp_path)
    store.check_writable()  # as a sweep starts
    writer = RunWriter(parse_args(["--models", "mfnet", "--measure", "cost"]), store)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "append", full)
    with pytest.raises(OSError, match="No space left"):
        writer.save([Measurement("mfnet", "cost", "params", 1.0, "count")])
    assert not list((tmp_path / "runs").glob("*.json"))
    monkeypatch.undo()
    writer.save([Measurement("mfnet", "cost", "params", 1.0, "count")])  # room again: sidecar and rows
    assert [p.stem for p in (tmp_path / "runs").glob("*.json")] == [writer.run_id]
