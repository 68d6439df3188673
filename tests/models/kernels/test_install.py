"""A non-editable install uses the kernel library from its installed copy: every source and header
ships as package data, and nothing needs the checkout.

The installed copy is not compiled again here (a minute and a half on two cores, most of this
test's time): the library this session built from the checkout is put in the new environment's
cache with its stamp, which ``build`` honours only where the installed sources and headers are the
checkout's byte for byte (``build._sources_digest``). A file missing from the package, or
different, would start a build, and the test fails on that. The build itself is what every fresh
checkout's first test run does."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from models.kernels import build
from tests.paths import REPO

pytestmark = pytest.mark.slow  # an install into a new environment

USE = """
import torch, models
from models import kernels
from models.kernels import build
model = models.create_model("mfnet", num_classes=5).eval()
with torch.inference_mode():
    print(tuple(model(torch.randn(1, 3, 4, 32, 32)).shape))
print(kernels.status())
print(build.CSRC)
"""


def test_pip_install_then_create_model_elsewhere_runs_the_kernels_from_the_installed_copy(tmp_path, monkeypatch):
    assert build.extension() is not None, build.why()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    cache = build.build_dir()  # the new environment's: the built library and its stamp, nothing else
    monkeypatch.undo()
    cache.mkdir(parents=True, exist_ok=True)  # torch makes it as it names it
    for name in (f"{build.NAME}.so", "verified"):
        shutil.copy2(build.build_dir() / name, cache / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # no pip of its own: this environment's pip and setuptools build the wheel
    python = env_dir / "bin" / "python"
    # this environment's packages (torch, pip, setuptools and the rest) behind the new one's,
    # without its editable install of the suite: a .pth path is added, the .pth files inside it
    # are not processed
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"])
    source = tmp_path / "source"  # a copy: setuptools builds in the tree it is given
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".nox", "__pycache__", "build", "*.egg-info", "results*", "reports", "tests", "runs"))
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    out = subprocess.run([python, "-c", USE], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (cache / "build.ninja").exists()  # no build step: the installed sources are the checkout's
    shape, status, csrc = out.stdout.strip().splitlines()[-3:]
    assert shape == "(1, 5)" and status.startswith("suite kernel (")
    assert csrc.startswith(str(env_dir)) and str(REPO) not in csrc  # the installed copy, not the checkout
    assert not (source / "models" / "kernels" / "csrc" / "mfnet_kernels.so").exists()
    assert sys.executable != str(python)
