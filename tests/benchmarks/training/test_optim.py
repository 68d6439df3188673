"""The schedule (benchmarks/training/optim.py): warm-up counts epochs of data under a time budget too."""

import math

import pytest

from benchmarks import training
from benchmarks.training import optim


def test_warm_up_counts_epochs_of_data_under_a_time_budget_too():
    timed = training.Config(model="mfnet", epochs=1000, time_budget=60.0, warmup_epochs=0.5,
                         schedule="cosine")
    # a quarter of an epoch in, a few seconds into the budget: still warming up, at half the rate
    assert optim.lr_factor(timed, progress=0.01, epoch=0.25) == pytest.approx(
        0.5 * 0.5 * (1 + math.cos(math.pi * 0.01)))
    assert optim.lr_factor(timed, progress=0.5, epoch=2.0) == pytest.approx(0.5)  # cosine by the clock
    # a slow model a tenth of an epoch into the budget still warms up by the clock: it ends at
    # MAX_WARMUP_SHARE of the budget whatever the epochs, not after half an epoch it never sees
    share = optim.MAX_WARMUP_SHARE
    assert optim.lr_factor(timed, progress=share / 2, epoch=0.01) == pytest.approx(
        0.5 * 0.5 * (1 + math.cos(math.pi * share / 2)))
    assert optim.lr_factor(timed, progress=share, epoch=0.1) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * share)))
    stepped = training.Config(model="mfnet", epochs=30, schedule="step", decay_epochs=(10, 20), warmup_epochs=0)
    assert [optim.lr_factor(stepped, e / 30, e) for e in (0, 10, 25)] == pytest.approx([1, 0.1, 0.01])
