"""Where a model's time goes (benchmarks/measure/profile.py, op_profile.py): the per-op and per-conv
tables that explain a low peak fraction, and the bounds they set."""

import math

import pytest

from benchmarks import op_profile
from benchmarks.measure import profile
from benchmarks.measure.workload import Setup, Workload


@pytest.mark.parametrize("fiber_kernel", [False, True])
def test_conv_table_accounts_for_every_multiply_add_of_mfnet(fiber_kernel):
    """On the suite's kernel too, where inference folds BN + ReLU into the fiber convs: the
    table's hooks still see every conv."""
    from benchmarks.measure.cost import count_macs

    workload = Workload("mfnet", Setup(fiber_kernel=fiber_kernel), (8, 32, 32))
    x, _ = workload.inputs(1)
    rows = profile.conv_table(workload, x, repeats=1)
    kinds = {kind for kind, *_ in rows}
    assert {"dense", "pointwise", "grouped 6->6 per group", "grouped 48->48 per group"} <= kinds
    conv_gmacs = sum(gmacs for *_, gmacs, _ in rows)
    linear_gmacs = 768 * 400 / 1e9
    assert conv_gmacs + linear_gmacs == pytest.approx(count_macs("mfnet", (8, 32, 32)).gmacs, rel=1e-6)
    assert all(ms > 0 and rate > 0 for _, _, ms, _, rate in rows)


def test_training_conv_table_counts_forward_and_backward():
    workload = Workload("mfnet", Setup(), (8, 32, 32))
    x, _ = workload.inputs(1)
    forward = {row[:2]: row[3] for row in profile.conv_table(workload, x, repeats=1)}
    train = {row[:2]: row[3] for row in profile.conv_table(workload, x, repeats=1, train=True)}
    assert train.keys() == forward.keys()
    for key, gmacs in forward.items():
        assert train[key] == pytest.approx(3 * gmacs)


def test_grouped_bound_is_the_step_over_the_grouped_convs_time():
    rows = [("pointwise", "1x1x1", 30.0, 2.0, 66.7), ("grouped 6->6 per group", "3x3x3", 40.0, 1.0, 25.0),
            ("grouped 12->12 per group", "1x3x3", 10.0, 1.0, 100.0)]
    assert profile.grouped_bound(rows, 4.0) == (50.0, pytest.approx(80.0))
    assert profile.grouped_bound(rows[:1], 2.0)[0] == 0


def test_speedup_needed_is_amdahl_over_the_grouped_convs():
    rows = [("pointwise", "1x1x1", 30.0, 2.0, 66.7), ("grouped 6->6 per group", "3x3x3", 40.0, 1.0, 25.0),
            ("grouped 12->12 per group", "1x3x3", 20.0, 2.0, 100.0)]
    # a 100 ms step: 60 ms grouped (3 GMACs), 40 ms the rest; free grouped convs give 2.5x
    ceiling, ms, rate = profile.speedup_needed(100.0, rows, 1.5)
    assert ceiling == pytest.approx(2.5)
    assert ms == pytest.approx(100 / 1.5 - 40)  # 26.7 ms for the grouped convs
    assert rate == pytest.approx(3.0 / (ms / 1e3))
    # a 3x faster step is beyond the ceiling: no time is enough
    ceiling, ms, rate = profile.speedup_needed(100.0, rows, 3.0)
    assert ms < 0 and rate == math.inf


@pytest.mark.slow
def test_cli_prints_both_tables_and_the_bound_against_a_dense_model(capsys):
    assert op_profile.main(["--model", "mfnet", "--clip", "8,32,32", "--train", "--rows", "5",
                            "--against", "res3d"]) == 0
    out = capsys.readouterr().out
    assert "training step" in out and "Self CPU" in out
    assert "every convolution alone, forward + backward" in out and "grouped 12->12 per group" in out
    assert "bound: the grouped convs alone take" in out
    assert "bound: all convs together take" in out
    assert "forecast: the step takes" in out and "with its grouped convs free" in out
    assert "x faster step" in out
    assert "res3d (training step at its spec input" in out and "(all convs) of it" in out


@pytest.mark.parametrize("argv", [["--model", "mfnett"], ["--against", "res3dd"]])
def test_unknown_model_is_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        op_profile.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
