"""Each model's layout (benchmarks/measure/layout.py): the rule, the probe's rows, a stored
choice read back, and ``run.py``'s default run timing every model in the layout its probe chose."""

import pytest

from benchmarks import run
from benchmarks.measure import layout
from benchmarks.measure.workload import Setup
from benchmarks.runner import measure as runner_measure
from benchmarks.runner.options import parse_args
from benchmarks.store import Measurement, ResultsStore, RunConditions, read_csv


@pytest.mark.parametrize("ncdhw, cl, chosen", [(100.0, 94.0, True), (100.0, 96.0, False), (100.0, 150.0, False)])
def test_channels_last_only_where_it_is_faster_by_the_margin(ncdhw, cl, chosen):
    assert layout.choose(ncdhw, cl).channels_last is chosen


def _timings(ncdhw_s, cl_s):
    return lambda steps, sync, min_run_time, min_steps: [(t, t / 10, 3) for t in (ncdhw_s, cl_s)]


def test_the_probe_times_both_layouts_and_stores_both_medians(tiny_models, monkeypatch):
    monkeypatch.setattr(layout, "time_interleaved", _timings(0.2, 0.1))
    choice, rows = layout.probe("tiny3d", Setup(), None, 2, 0.01)
    assert choice.channels_last and "channels-last (probe: NCDHW 200 ms, channels-last 100 ms" in choice.describe()
    by_metric = {r.metric: r for r in rows}
    assert by_metric["layout_ncdhw_ms"].value == pytest.approx(200) and not by_metric["layout_ncdhw_ms"].channels_last
    assert by_metric["layout_channels_last_ms"].channels_last
    assert {r.phase for r in rows} == {"probe"} and {r.batch_size for r in rows} == {2}
    assert {r.clip for r in rows} == {"4x16x16"}


def test_a_real_probe_runs_both_layouts(tiny_models):
    choice, rows = layout.probe("tiny3d", Setup(), None, 2, 0.01, min_steps=1)
    assert len(rows) == 2 and all(r.value > 0 for r in rows)
    assert choice == layout.choose(rows[0].value, rows[1].value)


def _context(tmp_path, options):
    store = ResultsStore(tmp_path)
    conditions = RunConditions("run-1", "cpu", "CPU X", "fp32", "best", False, 2, "stock")
    return store, runner_measure.Context(conditions, conditions, (), Setup(), store)


def test_a_stored_choice_is_read_back_instead_of_probing_again(tiny_models, tmp_path, monkeypatch):
    options = parse_args(["--models", "tiny3d", "--measure", "speed"])
    store, context = _context(tmp_path, options)
    rows = [Measurement("tiny3d", "speed", metric, ms, "ms", "probe", 4, "4x16x16", channels_last=cl)
            for metric, ms, cl in (("layout_ncdhw_ms", 50.0, False), ("layout_channels_last_ms", 20.0, True))]
    store.append(rows, context.conditions, "2026-01-01T00:00:00+00:00")
    monkeypatch.setattr(layout, "probe", lambda *a, **k: pytest.fail("probed again"))
    setup, probed = runner_measure.chosen_layout("tiny3d", options, "4x16x16", context)
    assert setup.channels_last and probed == []
    other = parse_args(["--models", "tiny3d", "--measure", "speed", "--batch-size", "2"])  # another batch: probe
    monkeypatch.setattr(layout, "probe", lambda *a, **k: (layout.choose(10.0, 20.0), ["rows"]))
    setup, probed = runner_measure.chosen_layout("tiny3d", other, "4x16x16", context)
    assert not setup.channels_last and probed == ["rows"]


@pytest.mark.parametrize("argv, expected", [([], "best"), (["--channels-last"], "channels_last"),
                                            (["--layout", "ncdhw"], "ncdhw"),
                                            (["--layout", "channels-last", "--channels-last"], "channels_last")])
def test_layout_options(argv, expected):
    assert parse_args(["--models", "mfnet", *argv]).layout == expected


def test_channels_last_and_another_layout_is_one_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--models", "mfnet", "--channels-last", "--layout", "ncdhw"])
    assert "--channels-last with --layout ncdhw: give one of them" in capsys.readouterr().err


def test_the_default_run_times_each_model_in_its_probed_layout(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "time_interleaved", _timings(0.2, 0.1))  # the probe finds channels-last faster
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
