"""TODO"""

import pytest

import models
from benchmarks.measure import cost


@pytest.mark.parametrize("name", models.list_models())
def test_the_two_counters_agree_on_conv_and_linear(name):
    spec = models.get_spec(name)
    clip = (spec.min_input[1:] if spec.min_input and spec.min_input[-1] > 64
            else (2 if spec.family == "frame" else 16, 64, 64))
    flop_counter = cost.count_macs(name, clip).macs
    fvcore = cost.count_macs_fvcore(name, clip)
    assert fvcore["conv_linear"] == pytest.approx(flop_counter, rel=0.01)
    assert fvcore["all"] >= fvcore["conv_linear"]  # fvcore adds BatchNorm and friends
