"""The motion benchmark's protocol (benchmarks/runner/accuracy.py): every model's training rate
probed first, its time budget turned into clips at a quiet machine's rate, a load during a probe
scaled away and a load during every probe flagged."""

from pathlib import Path

from benchmarks import runner
from benchmarks.machine import contention
from benchmarks.measure import peak
from benchmarks.runner import accuracy
from benchmarks.store import RunConditions

CONDITIONS = RunConditions("r", "cpu", "Test CPU", "fp32", "ncdhw", False, 2)


def test_run_py_keeps_accuracy_checkpoints_under_its_results_folder(tmp_path):
    options = runner.parse_args(["--measure", "accuracy", "--results", str(tmp_path / "mine")])
    assert Path(accuracy.accuracy_config("mfnet", options).out) == tmp_path / "mine" / "checkpoints"


def test_a_load_during_one_probe_does_not_shrink_that_models_budget(tmp_path, monkeypatch):
    # two models probed in turn; another job takes half the machine during the first probe
    peaks = iter([50.0, 100.0])
    rates = {"mfnet": 5.0, "c3d": 8.0}  # clips/s as probed: mfnet's at half speed
    monkeypatch.setattr(peak, "peak_gmacs_per_s", lambda *a, **k: {"conv": next(peaks)})
    monkeypatch.setattr(accuracy, "probe_rate", lambda cfg, seconds: rates[cfg.model])
    options = runner.parse_args(["--models", "mfnet,c3d", "--measure", "accuracy", "--train-budget", "4",
                                 "--results", str(tmp_path)])  # not --quick: it shares one peak
    probes = accuracy.probe_phase(["mfnet", "c3d"], options)
    mfnet, note = accuracy.clip_budget("mfnet", options, probes, CONDITIONS)
    assert mfnet == 40 and "x2.00" in note  # 5 clips/s x 4 s x (100 / 50): a quiet machine's
    assert accuracy.clip_budget("c3d", options, probes, CONDITIONS)[0] == 32 and not note.startswith("busy")


def test_every_probe_under_load_flags_the_clip_budgets(tmp_path, monkeypatch):
    class Loaded(contention.CpuMeter):  # a whole CPU of another program's load on 2 CPUs
        def read(self):
            return contention.Contention(1.0, 0.0, 3.0, 2, 2)

    monkeypatch.setattr(accuracy, "CpuMeter", Loaded)
    monkeypatch.setattr(peak, "peak_gmacs_per_s", lambda *a, **k: {"conv": 50.0})
    monkeypatch.setattr(accuracy, "probe_rate", lambda cfg, seconds: 5.0)
    options = runner.parse_args(["--models", "mfnet,c3d", "--measure", "accuracy", "--train-budget", "4",
                                 "--results", str(tmp_path)])  # a fresh store: nothing recorded to compare
    probes = accuracy.probe_phase(["mfnet", "c3d"], options)
    clips, note = accuracy.clip_budget("mfnet", options, probes, CONDITIONS)
    assert clips == 20 and note.startswith("busy machine: during every probe other processes used 1.00")
