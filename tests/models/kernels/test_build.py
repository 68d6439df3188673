"""The loader (models/kernels/build.py): no compiler falls back in one line, a damaged cached
library is rebuilt rather than crash the process, recording the status never builds."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from models import kernels
from models.kernels import build
from models.kernels.modules import FiberConv3d
from models.kernels.ops import fiber
from tests.models.kernels.helpers import close
from tests.paths import REPO


def test_no_compiler_falls_back_to_pytorch_in_one_line(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'mfnet_kernels'\ng++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(build, "build_dir", lambda: tmp_path / build.NAME)  # nothing cached
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.warns(UserWarning, match="fiber convs run on PyTorch's own kernels"):
        assert build.extension() is None
    assert kernels.status() == ("stock PyTorch kernels: the kernel could not be built "
                                "(RuntimeError: g++: command not found)")
    assert kernels.isa() == "" and kernels.why_not("cpu").startswith("the kernel could not be built")
    conv = FiberConv3d(32, 32, (3, 3, 3), 1, (1, 1, 1), groups=16, bias=False)
    x = torch.randn(1, 32, 4, 8, 8)
    close(conv(x), fiber.reference(x, conv.weight, 16))
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv(build.SWITCH, "off")
    assert build.extension() is None and kernels.status() == f"stock PyTorch kernels: {build.SWITCH}=off"


def test_a_model_optimized_where_the_library_cannot_be_built_runs_as_the_stock_one(monkeypatch):
    import models

    monkeypatch.setattr(build, "_loaded", {"module": None, "why": "simulated", "pool": False})
    torch.manual_seed(0)
    stock = models.create_model("mfnet", num_classes=5, fiber_kernel=False).eval()
    fast = kernels.optimize(models.create_model("mfnet", num_classes=5, fiber_kernel=False)).eval()
    fast.load_state_dict(stock.state_dict())
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        close(fast(x), stock(x))
    fast.train()(x).sum().backward()  # training too


def test_recording_the_status_never_builds_the_library(monkeypatch):
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "extension", lambda: pytest.fail("built the library"))
    assert kernels.status(load=False).startswith("not loaded")


def test_a_damaged_cached_library_is_rebuilt_rather_than_crash_the_process(tmp_path, monkeypatch):
    # a build killed while it linked leaves a library whose loading kills the process (SIGBUS)
    folder = tmp_path / build.NAME
    folder.mkdir()
    library = folder / f"{build.NAME}.so"
    library.write_bytes(b"\x7fELF" + b"\0" * 60)  # a truncated shared object
    monkeypatch.setattr(build, "build_dir", lambda: folder)
    with pytest.warns(UserWarning, match="does not load; building it afresh"):
        build.check_cache()  # tried in a child process, which fails
    assert not folder.exists()  # so load() builds it from scratch
    # one this suite has loaded before (its digest recorded) is not tried again
    folder.mkdir()
    library.write_bytes(b"a library that loaded")
    (folder / "verified").write_text(build._digest(library))
    monkeypatch.setattr(build, "_loads_in_a_child", lambda path: pytest.fail("tried again"))
    build.check_cache()
    assert library.exists()
    library.write_bytes(b"changed since")  # a different file: tried, and here it fails
    monkeypatch.setattr(build, "_loads_in_a_child", lambda path: False)
    with pytest.warns(UserWarning):
        build.check_cache()
    assert not folder.exists()


def test_every_source_the_library_is_built_from_ships_with_the_package():
    """A non-editable install builds the library from its installed copy: every translation unit
    and every header they include is package data (pyproject.toml)."""
    import re
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = [f"models/kernels/{p}" for p in data["models.kernels"]]
    included = {m for s in build.SOURCES for m in re.findall(r'#include "([^"]+)"', s.read_text())}
    needed = [s.relative_to(root) for s in build.SOURCES] + [Path("models/kernels/csrc") / h for h in included]
    assert all(any(fnmatch(str(f), p) for p in patterns) for f in needed), needed
    assert sorted(p.name for p in build.CSRC.glob("*.cpp")) == sorted(s.name for s in build.SOURCES)


def test_a_missing_compiler_is_named_in_one_line_before_any_build(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("a build was started"))
    monkeypatch.setattr(build, "build_dir", lambda: tmp_path / build.NAME)
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler: no-such-compiler-here is not on PATH"):
        assert build.extension() is None
    assert "\n" not in build.why()


def test_a_failed_build_is_named_by_the_compiler_s_first_error_not_ninja_s_last_words():
    log = ("Error building extension 'mfnet_kernels': [1/9] c++ -c fiber_cl.cpp\n"
           "FAILED: fiber_cl.o\nfiber_cl.cpp:12:3: error: 'foo' was not declared in this scope\n"
           "fiber_cl.cpp:40:1: error: expected ';'\nninja: build stopped: subcommand failed.")
    assert build.build_failure(RuntimeError(log)) == "fiber_cl.cpp:12:3: error: 'foo' was not declared in this scope"
    assert build.build_failure(RuntimeError("ninja: build stopped\nld: cannot find -lgomp")) == "ld: cannot find -lgomp"


@pytest.mark.slow
@pytest.mark.skipif(build.extension() is None, reason="the kernel library could not be built here")
def test_a_verified_cache_is_loaded_with_no_build_step_so_a_read_only_one_works(tmp_path):
    """torch's build step takes a lock file in the cache folder, which a read-only cache cannot
    hold: a library that loaded before, from these sources and this torch, is imported as it is."""
    cache = tmp_path / "extensions"
    shutil.copytree(build.build_dir(), cache / build.NAME)
    probe = ("import sys, torch.utils.cpp_extension as c; from models.kernels import build\n"
             "c.load = lambda *a, **k: sys.exit('a build was started')\n"
             "print(build.extension() is not None, build.why())")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[0] == "True", out.stderr[-2000:]
    (cache / build.NAME / "verified").write_text("a stamp from other sources")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert "a build was started" in out.stdout + out.stderr or "False" in out.stdout  # stale: built again
