"""The loader (models/kernels/build.py): no compiler falls back in one line, a damaged cached
library is rebuilt rather than crash the process, recording the status never builds."""

import pytest
import torch

from models import kernels
from models.kernels import build
from models.kernels.modules import FiberConv3d
from models.kernels.ops import fiber
from tests.models.kernels.helpers import close


def test_no_compiler_falls_back_to_pytorch_in_one_line(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'mfnet_kernels'\ng++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
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
