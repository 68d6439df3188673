"""benchmarks/run.py: bad input, the results schema, resume, failure isolation, counters."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from benchmarks import cost, environment, run, speed
from benchmarks.results import (
    COLUMNS,
    Measurement,
    ResultsStore,
    RunConditions,
    load_results,
    read_csv,
)
from models import registry
from models.specs import ModelSpec

REPO = Path(__file__).resolve().parent.parent
TINY = ["--models", "mfnet2d", "--clip", "1,32,32", "--quick", "--batch-size", "2"]


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage dump, no traceback
    return err


def test_unknown_model_is_one_line_with_suggestions(capsys, tmp_path):
    err = cli_error(capsys, ["--models", "mfnet,i3dd", "--results", str(tmp_path)])
    assert "unknown model 'i3dd'" in err and "Did you mean i3d" in err


@pytest.mark.parametrize("clip, expected", [("16,112", "three integers"), ("a,b,c", "three integers"),
                                            ("16,8,8", "too small"), ("0,64,64", "too small")])
def test_malformed_or_too_small_clip(capsys, tmp_path, clip, expected):
    assert expected in cli_error(capsys, ["--models", "mfnet", "--clip", clip,
                                          "--results", str(tmp_path)])


def test_a_clip_too_small_for_one_model_names_it(capsys, tmp_path):
    # C3D's five 2x poolings need 16 frames; 4 frames cannot pass pool5
    err = cli_error(capsys, ["--models", "mfnet,c3d", "--clip", "4,32,32",
                             "--results", str(tmp_path / "r")])
    assert "does not fit c3d" in err
    assert not (tmp_path / "r" / "measurements.csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, tmp_path):
    assert "no CUDA GPU" in cli_error(capsys, ["--device", "cuda", "--results", str(tmp_path)])


def test_unwritable_results_directory(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = cli_error(capsys, TINY + ["--results", str(blocker / "results")])
    assert "cannot write results" in err


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


def test_rerun_skips_what_is_measured_and_force_remeasures(tiny_run):
    results, _ = tiny_run
    before = len(read_csv(results / "measurements.csv"))
    assert run.main(TINY + ["--measure", "cost,memory", "--results", str(results)]) == 0
    assert len(read_csv(results / "measurements.csv")) == before
    # timings already held: no speed row, and no machine peak without a timing beside it
    sidecars = sorted((results / "runs").iterdir())
    assert run.main(TINY + ["--measure", "speed", "--results", str(results)]) == 0
    assert len(read_csv(results / "measurements.csv")) == before
    # a run that measured nothing leaves no environment sidecar: a clean checkout stays clean
    assert sorted((results / "runs").iterdir()) == sidecars
    assert run.main(TINY + ["--measure", "cost", "--force", "--results", str(results)]) == 0
    after = read_csv(results / "measurements.csv")
    assert (after["metric"] == "params").sum() == 2


def test_quick_runs_go_to_their_own_store_unless_told():
    # smoke-test timings in results/ would be the newest rows the report shows, and would count
    # as "already measured" for a later full run
    assert run.parse_args(["--quick"]).results == run.QUICK_RESULTS != "results"
    assert run.parse_args([]).results == "results"
    assert run.parse_args(["--quick", "--results", "mine"]).results == "mine"


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


@pytest.mark.parametrize("name", models.list_models())
def test_the_two_counters_agree_on_conv_and_linear(name):
    spec = models.get_spec(name)
    clip = (spec.min_input[1:] if spec.min_input and spec.min_input[-1] > 64
            else (2 if spec.family == "frame" else 16, 64, 64))
    flop_counter = cost.count_macs(name, clip).macs
    fvcore = cost.count_macs_fvcore(name, clip)
    assert fvcore["conv_linear"] == pytest.approx(flop_counter, rel=0.01)
    assert fvcore["all"] >= fvcore["conv_linear"]  # fvcore adds BatchNorm and friends


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


def test_rss_growth_is_the_childs_own_even_under_a_large_parent():
    from benchmarks.memory import cpu_peak_rss_growth
    from benchmarks.workload import Setup

    ballast = torch.ones(250_000_000)  # 1 GB in the parent: ru_maxrss would carry it over
    growth = cpu_peak_rss_growth("mfnet", Setup(), (8, 64, 64), 2)
    del ballast
    assert 20 < growth < 1000  # MB: a real step's activations, not 0 and not the parent's 1 GB


@pytest.mark.parametrize("args, message", [
    (["--models", ""], "--models is empty"),
    (["--measure", "accuracy", "--train-budget", "0"], "--train-budget 0 is invalid"),
    (["--measure", "accuracy", "--train-budget", "nan"], "--train-budget nan is invalid"),
    (["--models", "resnet18", "--measure", "accuracy"], "resnet18 take images"),
    (["--models", "mfnet", "--measure", "accuracy", "--clip", "16,32,48"], "H and W must be equal"),
])
def test_run_refuses_what_cannot_mean_anything_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.strip().count("\n") == 0


def test_run_py_keeps_accuracy_checkpoints_under_its_results_folder(tmp_path):
    args = run.parse_args(["--measure", "accuracy", "--results", str(tmp_path / "mine")])
    assert Path(run.accuracy_config("mfnet", args).out) == tmp_path / "mine" / "checkpoints"


def test_ctrl_c_and_a_crash_each_have_their_status_and_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run", interrupted)
    assert run.main(["--models", "mfnet", "--measure", "cost", "--results", str(tmp_path)]) == 130
    assert "run the same command again" in capsys.readouterr().err

    def crashed(*a, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(run, "run", crashed)
    assert run.main(["--models", "mfnet", "--measure", "cost", "--results", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "trace written to" in err
    log = Path(err.split("trace written to ")[1].strip())
    assert "ZeroDivisionError: a bug" in log.read_text()


def test_the_gpu_policy_is_set_on_purpose_and_recorded():
    from benchmarks import runtime

    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        strict = runtime.gpu_policy("fp32")
        assert strict == {"cudnn_benchmark": True, "tf32_matmul": False, "tf32_conv": False,
                          "float32_matmul_precision": "highest"}
        assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert runtime.gpu_policy("tf32")["tf32_conv"] and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = before[:3]
        torch.set_float32_matmul_precision(before[3])


def test_a_cuda_run_records_its_policy_and_sizes_its_peak_for_the_device(monkeypatch):
    from benchmarks import environment, runtime, speed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(environment, "collect", lambda device: {"device_name": "Fake GPU", "threads": 8})
    applied = []
    monkeypatch.setattr(runtime, "gpu_policy", lambda dtype: applied.append(dtype) or {"tf32_conv": False})
    args = run.parse_args(["--models", "mfnet", "--measure", "speed", "--device", "cuda"])
    writer = run.RunWriter(args, run.ResultsStore("unused"))
    assert applied == ["fp32"] and writer.sidecar["gpu_policy"] == {"tf32_conv": False}
    assert writer.conditions.device_name == "Fake GPU" and writer.conditions.threads == 8
    n, conv_input = speed.peak_problem("cuda")
    assert n ** 3 >= 64 * speed.peak_problem("cpu")[0] ** 3 and conv_input[0] * conv_input[2] >= 128


def test_tf32_is_refused_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--dtype", "tf32"])
    assert exit_info.value.code == 2 and "CUDA math mode" in capsys.readouterr().err


def test_a_load_during_one_probe_does_not_shrink_that_models_budget(tmp_path, monkeypatch):
    from benchmarks import speed, train

    # two models probed in turn; another job takes half the machine during the first probe
    peaks = iter([50.0, 100.0])
    rates = {"mfnet": 5.0, "c3d": 8.0}  # clips/s as probed: mfnet's at half speed
    monkeypatch.setattr(speed, "peak_gmacs_per_s", lambda *a, **k: {"conv": next(peaks)})
    monkeypatch.setattr(train, "probe_rate", lambda cfg, seconds: rates[cfg.model])
    args = run.parse_args(["--models", "mfnet,c3d", "--measure", "accuracy", "--train-budget", "4",
                           "--results", str(tmp_path)])  # not --quick: it shares one peak
    args.probes = run.probe_phase(["mfnet", "c3d"], args)
    args.conditions = RunConditions("r", "cpu", "Test CPU", "fp32", False, False, 2)
    mfnet, note = run.clip_budget("mfnet", args)
    assert mfnet == 40 and "x2.00" in note  # 5 clips/s x 4 s x (100 / 50): a quiet machine's
    assert run.clip_budget("c3d", args)[0] == 32 and not note.startswith("busy")


def test_training_to_a_clip_budget_is_deterministic_and_flags_a_slow_machine(tmp_path, monkeypatch):
    from benchmarks import speed, train

    store = ResultsStore(tmp_path)
    conditions = RunConditions("run-0", "cpu", environment.device_name("cpu"), "fp32", False, False,
                               torch.get_num_threads())
    store.append([Measurement("_machine", "speed", "peak_gmacs_per_s", 100.0, "GMAC/s", "start")],
                 conditions, "2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(train, "probe_rate", lambda cfg, seconds: 10.0)
    args = ["--models", "mfnet", "--measure", "accuracy", "--clip", "8,32,32", "--train-budget", "4",
            "--results", str(tmp_path)]  # not --quick: its smoke test runs by the clock
    for peak in (100.0, 40.0):  # as recorded, then a whole run on a machine at 40% of it
        monkeypatch.setattr(speed, "peak_gmacs_per_s", lambda *a, p=peak, **k: {"conv": p})
        assert run.main(args + ["--force"]) == 0
    rows = read_csv(tmp_path / "measurements.csv")
    budgets = rows[rows["metric"] == "clip_budget"]
    assert budgets["value"].tolist() == [40, 40]
    assert not budgets["note"].iloc[0].startswith("busy") and budgets["note"].iloc[1].startswith("busy")
    top1 = rows[rows["metric"] == "top1_video"]["value"].tolist()
    assert top1[0] == top1[1]  # the same clips, the same numbers: the clock played no part


def test_steps_timed_against_each_other_alternate_in_rounds():
    log = []
    results = speed.time_alternating([lambda: log.append("a"), lambda: log.append("b")],
                                     lambda: None, min_run_time=0.03, warmup=1, rounds=3)
    blocks = [k for i, k in enumerate(log) if i == 0 or log[i - 1] != k]
    assert blocks[:2] == ["a", "b"]  # the warm-ups
    assert blocks[2:] == ["a", "b"] * 3  # then three rounds, each timing a, then b
    assert all(len(r.times) >= 3 for r in results)  # every round's blocks, merged
