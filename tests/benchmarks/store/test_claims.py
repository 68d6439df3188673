"""Claims (benchmarks/store/claims.py): a measurement claimed by a live process is left to it, a
dead one's claim is taken over."""

import json
import subprocess
import sys

from benchmarks.store import ResultsStore, RunConditions


def conditions(run_id="r"):
    return RunConditions(run_id, "cpu", "x", "fp32", False, False, 2)


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
