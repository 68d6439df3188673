"""MF-Net's fiber convs timed one by one (benchmarks/measure/fiber_convs.py, fiber_conv.py): every
way of running one computes the grouped conv."""

import pytest

from benchmarks import fiber_conv


def test_fibers_as_a_batch_is_the_grouped_conv():
    import torch
    import torch.nn.functional as F

    from benchmarks.measure.fiber_convs import GROUPS, fibers_bmm

    x = torch.randn(2, 96, 3, 5, 6)
    weight = torch.randn(96, 96 // GROUPS, 3, 3, 3)
    torch.testing.assert_close(fibers_bmm(x, weight), F.conv3d(x, weight, padding=1, groups=GROUPS),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_cli_times_every_stage_every_way_this_machine_runs_it(capsys):
    assert fiber_conv.main(["--min-run-time", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "suite-cl" in lines[1] and [line.split()[0] for line in lines[2:]] == ["conv2", "conv3", "conv4", "conv5"]
