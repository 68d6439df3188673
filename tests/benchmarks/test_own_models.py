"""A model defined outside the repository gets every measurement, the report and its charts."""

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import models
from benchmarks import run
from benchmarks.reporting.render import render
from benchmarks.store import read_csv
from models import registry
from tests.paths import REPO

pytestmark = pytest.mark.slow  # every command, end to end, on a model from a file

MODEL_FILE = '''
from torch import nn
import models

class Mine(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3, 4)))

class Asserts(Mine):
    def forward(self, x):
        assert x.shape[2] == 4, "needs exactly 4 frames"
        return super().forward(x)

@models.register_model(input_shape=(3, 8, 64, 64), num_classes=10, display_name="Mine 3D")
def {name}(*, num_classes=10):
    {body}
'''


def model_file(folder: Path, name: str = "mine3d", body: str = "return Mine(num_classes)") -> Path:
    path = folder / f"{name}_models.py"
    path.write_text(textwrap.dedent(MODEL_FILE).format(name=name, body=body))
    return path


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Models a test registers are gone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_model_from_a_file_gets_cost_memory_speed_and_motion_accuracy_and_the_report(tmp_path):
    path = model_file(tmp_path)
    results = tmp_path / "results"
    code = run.main(["--import", str(path), "--models", "mine3d", "--measure", "cost,memory,speed,accuracy",
                     "--quick", "--results", str(results)])
    assert code == 0
    frame = read_csv(results / "measurements.csv")
    mine = frame[frame["model"] == "mine3d"]
    params = mine[(mine["metric"] == "params") & (mine["clip"] == "8x64x64")]["value"].iloc[0]
    assert params == 3 * 8 * 27 + 8 + 8 * 10 + 10  # conv + bias + linear + bias, exactly
    assert {"gmacs", "activation_mb", "latency_ms", "train_clips_per_s", "top1_video"} <= set(mine["metric"])
    render(results, tmp_path / "report")
    text = (tmp_path / "report" / "README.md").read_text()
    assert "## Your models" in text and "| Mine 3D | `mine3d` | 8×64×64 |" in text
    assert "no paper figure" in text
    for chart in ("speed_vs_cost.svg", "memory.svg"):
        assert "Mine 3D" in (tmp_path / "report" / chart).read_text(), chart


def test_an_installed_package_offers_models_through_its_entry_point(tmp_path, monkeypatch):
    model_file(tmp_path, "pkg3d")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry.ENTRY_POINT_GROUP
    points = [importlib.metadata.EntryPoint("pkg", "pkg3d_models", group),
              importlib.metadata.EntryPoint("broken", "no_such_module_here", group)]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [p for p in points if p.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "pkg3d" in models.list_models("user")  # the broken one is skipped with a warning
    assert models.create_model("pkg3d", num_classes=3).head.out_features == 3


@pytest.mark.parametrize("case, message", [
    ("syntax", "SyntaxError"),
    ("clash", "'mfnet' is already registered"),
    ("fails", "cannot build failing3d: RuntimeError: no weights here"),
    ("missing", "no such file"),
    ("asserts", "input 8x64x64 does not fit asserts3d: AssertionError: needs exactly 4 frames"),
])
def test_bad_model_files_are_one_line_and_exit_2(tmp_path, case, message):
    if case == "syntax":
        path = tmp_path / "broken.py"
        path.write_text("def oops(:\n")
    elif case == "clash":
        path = model_file(tmp_path, "mfnet")
    elif case == "fails":
        path = model_file(tmp_path, "failing3d", 'raise RuntimeError("no weights here")')
    elif case == "asserts":
        path = model_file(tmp_path, "asserts3d", "return Asserts(num_classes)")
    else:
        path = tmp_path / "absent.py"
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--import", str(path), "--measure", "cost",
                           "--results", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr


def test_train_py_imports_models_too(tmp_path):
    path = model_file(tmp_path)
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--import", str(path), "--model", "mine3d",
                           "--dataset", "motion", "--clip", "8,32,32", "--train-size", "8", "--val-size", "4",
                           "--epochs", "1", "--batch-size", "4", "--results", str(tmp_path / "r"),
                           "--out", str(tmp_path / "runs")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mine3d on motion" in proc.stdout


def test_train_py_refuses_a_model_whose_forward_asserts_in_one_line(tmp_path):
    path = model_file(tmp_path, "asserts3d", "return Asserts(num_classes)")
    proc = subprocess.run([sys.executable, "benchmarks/train.py", "--import", str(path), "--model", "asserts3d",
                           "--dataset", "motion", "--clip", "8,32,32", "--epochs", "1",
                           "--results", str(tmp_path / "r"), "--out", str(tmp_path / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not fit asserts3d: AssertionError: needs exactly 4 frames" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
