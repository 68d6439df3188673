"""Cost (benchmarks/measure/cost.py): the two counters (FlopCounterMode on meta, fvcore on real
tensors) agree on conv and linear multiply-adds."""

import pytest

import models
from benchmarks.measure import cost

# every model's count, fvcore's over real tensors, is slow: the quick tier counts three families
QUICK = ("mfnet", "res3d", "mfnet2d_frames")


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in models.list_models()])
def test_the_two_counters_agree_on_conv_and_linear(name):
    spec = models.get_spec(name)
    clip = (spec.min_input[1:] if spec.min_input and spec.min_input[-1] > 64
            else (2 if spec.family == "frame" else 16, 64, 64))
    flop_counter = cost.count_macs(name, clip).macs
    fvcore = cost.count_macs_fvcore(name, clip)
    assert fvcore["conv_linear"] == pytest.approx(flop_counter, rel=0.01)
    assert fvcore["all"] >= fvcore["conv_linear"]  # fvcore adds BatchNorm and friends
