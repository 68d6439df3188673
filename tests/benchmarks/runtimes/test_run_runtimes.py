"""``run.py --runtime``: a sweep per runtime, every row naming its runtime, the output checks
stored, a runtime that disagrees or cannot run here kept out of the speeds, and the report's
runtime table."""

import pytest

from benchmarks import run, runtimes
from benchmarks.reporting.render import render
from benchmarks.runner.options import parse_args, per_runtime
from benchmarks.runtimes import engines
from benchmarks.store import read_csv

ENGINES = [r for r in ("onnxruntime", "openvino") if not runtimes.refusal(r)]


def test_each_runtime_is_a_sweep_of_its_own_and_only_eager_measures_more_than_speed():
    options = parse_args(["--models", "mfnet,res3d", "--measure", "cost,speed", "--runtime", "onnxruntime,eager"])
    sweeps = per_runtime(options)
    assert [(s.runtime, s.measure) for s in sweeps] == [("onnxruntime", ("speed",)), ("eager", ("cost", "speed"))]
    assert sweeps[0].fiber_kernel == "stock" and sweeps[0].paired_models == ()
    assert sweeps[1].paired_models == ("mfnet", "res3d")  # footnote 5's pair, on eager as before
    options = parse_args(["--models", "mfnet", "--measure", "cost,speed", "--runtime", "openvino"])
    assert [(s.runtime, s.measure) for s in per_runtime(options)] == [("eager", ("cost",)), ("openvino", ("speed",))]
    assert parse_args(["--models", "mfnet", "--compile"]).runtimes == ("compile",)


@pytest.mark.parametrize("argv, message", [
    (["--runtime", "tensorflow"], "--runtime tensorflow: unknown runtime 'tensorflow'; choose from eager"),
    (["--runtime", ","], "--runtime takes any of eager"),
    (["--runtime", "eager", "--compile"], "--compile with --runtime: name compile among the runtimes instead"),
])
def test_a_runtime_that_cannot_mean_anything_is_one_line(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--models", "mfnet", "--measure", "speed", "--results", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not ENGINES, reason="no exported runtime installed")
def test_a_run_on_every_runtime_names_it_in_every_row_and_stores_the_checks(tiny_models, tmp_path, capsys):
    args = ["--models", "tiny3d", "--measure", "cost,speed", "--quick", "--results", str(tmp_path / "r")]
    assert run.main([*args, "--runtime", ",".join(["eager", *ENGINES])]) == 0
    frame = read_csv(tmp_path / "r" / "measurements.csv")
    speed = frame[(frame["model"] == "tiny3d") & (frame["measurement"] == "speed")]
    assert set(speed["runtime"]) == {"eager", *ENGINES}
    for runtime in ENGINES:
        mine = speed[speed["runtime"] == runtime].set_index("metric")
        assert mine.loc["output_top1_agreement", "value"] == 100.0 and mine.loc["output_rel_diff", "value"] < 1e-4
        assert {"latency_ms", "infer_clips_per_s"} <= set(mine.index) and "train_clips_per_s" not in mine.index
        assert (mine["kernels"] == "stock").all()
    assert set(frame[frame["measurement"] == "cost"]["runtime"]) == {"eager"}
    assert (tmp_path / "r" / ".exports").is_dir()
    render(tmp_path / "r", tmp_path / "report")  # a user model at its spec input: in the runtime table
    text = (tmp_path / "report" / "README.md").read_text()
    assert "## Runtimes and precisions: which model is fastest here" in text
    section = text.split("## Runtimes and precisions")[1]
    line = next(row for row in section.splitlines() if row.startswith("| tiny3d |"))
    assert line.count("**") == 2 and line.count("/") == 1 + len(ENGINES)


@pytest.mark.slow
@pytest.mark.skipif(not ENGINES, reason="no exported runtime installed")
def test_a_runtime_that_disagrees_is_an_error_row_not_a_speed(tiny_models, tmp_path, monkeypatch):
    runtime = ENGINES[0]
    real = engines.ENGINES[runtime]

    class Wrong(real):
        def __call__(self, x):
            return super().__call__(x) * 2  # a miscompiled graph

    monkeypatch.setitem(engines.ENGINES, runtime, Wrong)
    code = run.main(["--models", "tiny3d", "--measure", "speed", "--quick", "--runtime", runtime,
                     "--results", str(tmp_path)])
    assert code == 1
    frame = read_csv(tmp_path / "measurements.csv")
    mine = frame[frame["model"] == "tiny3d"]
    assert set(mine["metric"]) == {"output_max_abs_diff", "output_rel_diff", "output_top1_agreement", "error"}
    assert mine[mine["status"] == "error"]["error"].iloc[0].startswith(f"{runtime} disagrees with eager: ")


def test_a_runtime_that_cannot_run_this_dtype_is_skipped_in_one_line(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtimes.availability, "version", lambda runtime: "1.0")
    monkeypatch.setattr(runtimes.availability.peak, "runs_natively", lambda device, dtype: True)
    code = run.main(["--models", "tiny3d", "--measure", "speed", "--quick", "--dtype", "bf16",
                     "--runtime", "onnxruntime", "--results", str(tmp_path)])
    assert code == 2
    assert "run.py: onnxruntime: skipped: onnxruntime has no bf16 here (it runs fp32)" in capsys.readouterr().err
