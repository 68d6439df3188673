"""The timing discipline (benchmarks/measure/timing.py): steps timed against each other alternate
in rounds."""

from benchmarks.measure import timing


def test_steps_timed_against_each_other_alternate_in_rounds():
    log = []
    results = timing.time_alternating([lambda: log.append("a"), lambda: log.append("b")],
                                     lambda: None, min_run_time=0.03, warmup=1, rounds=3)
    blocks = [k for i, k in enumerate(log) if i == 0 or log[i - 1] != k]
    assert blocks[:2] == ["a", "b"]  # the warm-ups
    assert blocks[2:] == ["a", "b"] * 3  # then three rounds, each timing a, then b
    assert all(len(r.times) >= 3 for r in results)  # every round's blocks, merged


def test_a_probe_warms_each_step_once_then_times_them_in_turn_until_each_has_enough():
    log = []
    results = timing.time_interleaved([lambda: log.append("a"), lambda: log.append("b")], lambda: None,
                                      min_run_time=0.0, min_steps=3)
    assert log == ["a", "b"] + ["a", "b"] * 3
    assert [calls for _, _, calls in results] == [3, 3] and all(median >= 0 for median, _, _ in results)
