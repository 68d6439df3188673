"""Memory (benchmarks/measure/memory.py): the RSS probe measures its child's growth, the estimate
behind the memory guard covers every peak measured, the room under a cgroup, a dead probe child."""

import multiprocessing as mp
import os
import time

import pytest
import torch

from benchmarks.measure import memory
from benchmarks.store import (
    read_csv,
)
from tests.paths import REPO


@pytest.mark.slow
def test_rss_growth_is_the_childs_own_even_under_a_large_parent():
    from benchmarks.measure.memory import cpu_peak_rss_growth
    from benchmarks.measure.workload import Setup

    ballast = torch.ones(250_000_000)  # 1 GB in the parent: ru_maxrss would carry it over
    growth = cpu_peak_rss_growth("mfnet", Setup(), (8, 64, 64), 2)
    del ballast
    assert 20 < growth < 1000  # MB: a real step's activations, not 0 and not the parent's 1 GB


@pytest.mark.slow  # every model of the committed store
def test_the_estimate_covers_every_measured_peak_rss_in_the_committed_store():
    frame = read_csv(REPO / "results" / "measurements.csv")
    grown = frame[(frame["metric"] == "peak_rss_mb_train") & (frame["status"] == "ok")]
    grown = grown[grown["model"].isin(["mfnet", "i3d", "r2plus1d", "s3d", "res3d", "c3d", "x3d_m"])]
    assert len(grown) >= 5
    for row in grown.itertuples():
        clip = tuple(int(v) for v in row.clip.split("x"))
        estimate = memory.estimate_bytes(row.model, clip, int(row.batch_size), "train") / memory.MB
        # never under; over by at most what a model with large dense layers (C3D) costs
        assert row.value <= estimate <= 2.5 * row.value + 512, row.model


def test_the_room_under_a_cgroup_limit_counts_reclaimable_cache(tmp_path):
    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text(str(6 * 2**30))
    (tmp_path / "memory.stat").write_text(f"anon 1\nactive_file {2**29}\ninactive_file {2**29}\n")
    assert memory._room(tmp_path, *memory.CGROUP_V2) == 3 * 2**30
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._room(tmp_path, *memory.CGROUP_V2) is None
    room, source = memory.available_bytes()  # this machine's, whatever it is
    assert room is None or room > 0 and source


@pytest.mark.parametrize("target, expected", [(os.abort, "killed by signal 6"),
                                              (time.sleep, "exited with status 0")])
def test_a_dead_rss_probe_child_is_an_error_at_once(target, expected):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(0,) if target is time.sleep else ())
    process.start()
    started = time.perf_counter()
    status, message = memory._answer(process, queue, timeout_s=900)
    process.join()
    assert status == "error" and expected in message
    assert time.perf_counter() - started < 30  # not the 900 s timeout


def test_an_address_space_limit_is_read_like_a_cgroup_limit(monkeypatch):
    limit = 6 * 2**30
    unlimited = (memory.resource.RLIM_INFINITY,) * 2
    monkeypatch.setattr(memory.resource, "getrlimit",
                        lambda which: (limit, limit) if which == memory.resource.RLIMIT_AS else unlimited)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 20 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    room, source = memory.available_bytes()
    mapped = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    assert source == "the address-space limit of 6.0 GB, ulimit -v"
    assert abs(room - max(limit - mapped, 0)) < 256 * 2**20  # the limit less what is mapped already
    assert "ulimit -v" in memory.shortfall("i3d", None, 64, "infer")  # the guard refuses the step
