"""Claims (benchmarks/store/claims.py): a measurement claimed by a live process instance is left to
it, a dead one's claim is taken over, and another host's is held while it beats."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.store import ResultsStore, RunConditions, claims


def conditions(run_id="r"):
    return RunConditions(run_id, "cpu", "x", "fp32", "ncdhw", False, 2)


def test_a_claim_held_by_a_live_process_is_respected_and_a_dead_ones_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    key = ("mfnet", "speed", "16x224x224", None)
    with store.claim(*key, conditions("a")) as mine:
        assert mine == ""
        with ResultsStore(tmp_path).claim(*key, conditions("b")) as other:
            assert other.startswith("run a, pid")  # this process is alive
    assert not list((tmp_path / ".claims").iterdir())  # released
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.claim(*key, conditions("a")):
        claim = next((tmp_path / ".claims").iterdir())
        info = json.loads(claim.read_text()) | {"pid": dead.pid}
        claim.write_text(json.dumps(info))  # as if its run had been killed
    claim.write_text(json.dumps(info))
    with store.claim(*key, conditions("c")) as again:
        assert again == ""


def _claimed_by(tmp_path, **changes):
    """A claim on disk as another process would have left it, with ``changes`` to its record."""
    store = ResultsStore(tmp_path)
    key = ("mfnet", "speed", "16x224x224", None)
    with store.claim(*key, conditions("a")):
        path = next((tmp_path / ".claims").iterdir())
        info = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(info))
    return store, key, path


def test_a_claim_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process with the claim's PID, started after the claim's holder
        store, key, _ = _claimed_by(tmp_path, pid=live.pid)
        with store.claim(*key, conditions("b")) as other:
            assert other == ""
        store, key, _ = _claimed_by(tmp_path, pid=live.pid, started=claims.process_start(live.pid))
        with store.claim(*key, conditions("b")) as other:
            assert other.startswith("run a, pid")  # the same process instance: still its holder
    finally:
        live.kill()
        live.wait()


def test_a_claim_from_another_host_is_held_while_it_beats_and_taken_over_when_it_stops(tmp_path):
    store, key, path = _claimed_by(tmp_path, host="elsewhere", pid=1)
    with store.claim(*key, conditions("b")) as other:
        assert other == "run a, pid 1 on elsewhere"  # it beat just now
    stopped = time.time() - claims.STALE_S - 5
    os.utime(path, (stopped, stopped))
    with store.claim(*key, conditions("b")) as other:
        assert other == ""


def test_a_holder_beats_while_it_measures(tmp_path):
    path = tmp_path / "claim"
    path.write_text("{}")
    os.utime(path, (0, 0))
    with claims.beating(path, every=0.02):
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


def test_a_claim_that_cannot_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    real = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        real(self, "", *args, **kwargs)  # created, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        claims.take_claim(tmp_path / ".claims" / "c", claims.holder("a"))
    assert list((tmp_path / ".claims").iterdir()) == []
