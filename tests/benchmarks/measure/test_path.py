"""Each model's path (benchmarks/measure/path.py): the rule, the probe's rows, a stored choice
read back, the kernels tried only where the suite's apply, and ``run.py``'s default run timing
every model on the path its probe chose."""

import pytest

from benchmarks import run
from benchmarks.measure import path
from benchmarks.measure.workload import Setup
from benchmarks.runner import measure as runner_measure
from benchmarks.runner import plan
from benchmarks.runner.options import parse_args
from benchmarks.store import Measurement, ResultsStore, RunConditions, read_csv


@pytest.mark.parametrize("times, chosen", [
    ({(True, False): 100.0, (True, True): 94.0}, (True, True)),
    ({(True, False): 100.0, (True, True): 96.0}, (True, False)),  # within the margin: the baseline
    ({(True, False): 100.0, (True, True): 150.0}, (True, False)),
    ({(True, False): 100.0, (True, True): 90.0, (False, False): 99.0, (False, True): 60.0}, (False, True)),
])
def test_the_fastest_path_where_it_beats_the_baseline_by_the_margin(times, chosen):
    choice = path.choose(times, (True, False))
    assert (choice.suite, choice.channels_last) == chosen


def _timings(*seconds):
    return lambda steps, sync, min_run_time, min_steps: [(t, t / 10, 3) for t in seconds[:len(steps)]]


def test_the_probe_times_both_layouts_and_stores_both_medians(tiny_models, monkeypatch):
    monkeypatch.setattr(path, "time_interleaved", _timings(0.2, 0.1))
    choice, rows = path.probe("tiny3d", Setup(), None, 2, 0.01, (False,))
    assert choice.channels_last and "channels-last (probe: NCDHW 200 ms, channels-last 100 ms" in choice.describe()
    by_metric = {r.metric: r for r in rows}
    assert by_metric["layout_ncdhw_ms"].value == pytest.approx(200) and not by_metric["layout_ncdhw_ms"].channels_last
    assert by_metric["layout_channels_last_ms"].channels_last
    assert {r.phase for r in rows} == {"probe"} and {r.batch_size for r in rows} == {2}
    assert {r.clip for r in rows} == {"4x16x16"}


def test_a_real_probe_runs_every_candidate(tiny_models):
    choice, rows = path.probe("tiny3d", Setup(), None, 2, 0.01, (True, False), min_steps=1)
    assert len(rows) == 4 and all(r.value > 0 for r in rows)
    assert {(r.kernels, r.channels_last) for r in rows} == {(k, cl) for k in ("suite", "stock") for cl in (False, True)}
    assert choice == path.choose({(r.kernels == "suite", r.channels_last): r.value for r in rows}, (True, False))


def _context(tmp_path, options):
    store = ResultsStore(tmp_path)
    conditions = RunConditions("run-1", "cpu", "CPU X", "fp32", "best", False, 2, "suite")
    return store, runner_measure.Context(conditions, conditions, (), Setup(), store)


def test_a_stored_choice_is_read_back_instead_of_probing_again(tiny_models, tmp_path, monkeypatch):
    options = parse_args(["--models", "tiny3d", "--measure", "speed"])
    store, context = _context(tmp_path, options)
    rows = [Measurement("tiny3d", "speed", metric, ms, "ms", "probe", 4, "4x16x16", channels_last=cl)
            for metric, ms, cl in (("layout_ncdhw_ms", 50.0, False), ("layout_channels_last_ms", 20.0, True))]
    store.append(rows, context.conditions, "2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(path, "probe", lambda *a, **k: pytest.fail("probed again"))
    setup, probed = runner_measure.chosen_path("tiny3d", options, "4x16x16", context)
    assert setup.channels_last and probed == []
    other = parse_args(["--models", "tiny3d", "--measure", "speed", "--batch-size", "2"])  # another batch: probe
    monkeypatch.setattr(path, "probe", lambda *a, **k: (path.choose({(True, False): 10.0, (True, True): 20.0},
                                                                    (True, False)), ["rows"]))
    setup, probed = runner_measure.chosen_path("tiny3d", other, "4x16x16", context)
    assert not setup.channels_last and probed == ["rows"]


def test_kernels_are_tried_only_where_the_suite_s_apply_and_no_kernels_were_asked_for():
    default = parse_args(["--models", "x3d_m,res3d,mfnet", "--measure", "speed"])
    assert plan.kernel_candidates("x3d_m", default) == (True, False)  # depthwise 3x3x3 convs
    assert plan.kernel_candidates("res3d", default) == (True,)  # none: the same model either way
    assert plan.kernel_candidates("mfnet", default) == (True,)  # footnote 5's pair: timed on both anyway
    asked = parse_args(["--models", "x3d_m", "--measure", "speed", "--fiber-kernel", "suite"])
    assert plan.kernel_candidates("x3d_m", asked) == (True,)
    stock = parse_args(["--models", "x3d_m", "--measure", "speed", "--fiber-kernel", "stock"])
    assert plan.kernel_candidates("x3d_m", stock) == (False,)


@pytest.mark.parametrize("argv, expected", [([], "best"), (["--channels-last"], "channels_last"),
                                            (["--layout", "ncdhw"], "ncdhw"),
                                            (["--layout", "channels-last", "--channels-last"], "channels_last")])
def test_layout_options(argv, expected):
    assert parse_args(["--models", "mfnet", *argv]).layout == expected


def test_channels_last_and_another_layout_is_one_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--models", "mfnet", "--channels-last", "--layout", "ncdhw"])
    assert "--channels-last with --layout ncdhw: give one of them" in capsys.readouterr().err


@pytest.mark.slow  # run.py end to end
def test_the_default_run_times_each_model_in_its_probed_layout(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(path, "time_interleaved", _timings(0.2, 0.1))  # the probe finds channels-last faster
    assert run.main(["--models", "tiny3d", "--measure", "speed", "--quick", "--results", str(tmp_path)]) == 0
    frame = read_csv(tmp_path / "measurements.csv")
    mine = frame[frame["model"] == "tiny3d"]
    assert (mine["layout"] == "best").all()
    timed = mine[mine["phase"] != "probe"]
    assert set(timed["metric"]) >= {"latency_ms", "infer_clips_per_s"} and timed["channels_last"].all()
    probe = mine[mine["phase"] == "probe"].set_index("metric")
    assert probe.loc["layout_ncdhw_ms", "value"] == pytest.approx(200)
    assert run.main(["--models", "tiny3d", "--measure", "speed", "--quick", "--layout", "ncdhw",
                     "--results", str(tmp_path)]) == 0  # another condition: measured again, not held
    again = read_csv(tmp_path / "measurements.csv")
    forced = again[(again["model"] == "tiny3d") & (again["layout"] == "ncdhw")]
    assert not forced.empty and not forced["channels_last"].any() and (forced["phase"] != "probe").all()


@pytest.mark.slow  # run.py end to end
def test_a_model_faster_on_pytorch_s_kernels_is_timed_on_them_and_its_rows_say_so(tiny_models, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.setattr(plan, "kernel_candidates", lambda name, options: (True, False))
    # suite NCDHW, suite CL, stock NCDHW, stock CL: PyTorch's channels-last fastest
    monkeypatch.setattr(path, "time_interleaved", _timings(0.2, 0.2, 0.2, 0.1))
    args = ["--models", "tiny3d", "--measure", "speed", "--quick", "--results", str(tmp_path)]
    assert run.main(args) == 0
    frame = read_csv(tmp_path / "measurements.csv")
    timed = frame[(frame["model"] == "tiny3d") & (frame["phase"] != "probe")]
    assert set(timed["kernels"]) == {"stock"} and timed["channels_last"].all()
    probe = frame[frame["phase"] == "probe"]
    assert len(probe) == 4 and set(probe["kernels"]) == {"suite", "stock"}
    monkeypatch.setattr(path, "probe", lambda *a, **k: pytest.fail("probed again"))
    capsys.readouterr()
    assert run.main(args) == 0  # held: its stored choice says the rows to look for are stock's
    assert len(read_csv(tmp_path / "measurements.csv")) == len(frame)
    latency = timed[timed["metric"] == "latency_ms"]["value"].iloc[-1]
    assert f"{latency:.4g}" in capsys.readouterr().out  # the summary shows the rows of the path that ran
