"""benchmarks/op_profile.py: the per-op and per-conv tables that explain a low peak fraction."""

import pytest

from benchmarks import op_profile
from benchmarks.workload import Setup, Workload


def test_conv_table_accounts_for_every_multiply_add_of_mfnet():
    from benchmarks.cost import count_macs

    workload = Workload("mfnet", Setup(), (8, 32, 32))
    x, _ = workload.inputs(1)
    rows = op_profile.conv_table(workload, x, repeats=1)
    kinds = {kind for kind, *_ in rows}
    assert {"dense", "pointwise", "grouped 6->6 per group", "grouped 48->48 per group"} <= kinds
    conv_gmacs = sum(gmacs for *_, gmacs, _ in rows)
    linear_gmacs = 768 * 400 / 1e9
    assert conv_gmacs + linear_gmacs == pytest.approx(count_macs("mfnet", (8, 32, 32)).gmacs, rel=1e-6)
    assert all(ms > 0 and rate > 0 for _, _, ms, _, rate in rows)


def test_cli_prints_both_tables(capsys):
    assert op_profile.main(["--model", "mfnet", "--clip", "8,32,32", "--train", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "training step" in out and "Self CPU" in out
    assert "every convolution alone" in out and "grouped 12->12 per group" in out


def test_unknown_model_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        op_profile.main(["--model", "mfnett"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
