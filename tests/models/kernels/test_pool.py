"""models/kernels/csrc/pool.cpp: freed CPU blocks of 32 MiB and up kept for reuse, in front of PyTorch's
own allocator, so a large batch does not fault its activations in afresh every step. It is
process-wide and installed once, so each case runs in a fresh process of its own."""

import os
import subprocess
import sys

import pytest

from models.kernels import build
from tests.paths import REPO

pytestmark = pytest.mark.slow  # a fresh process per case

PROBE = """
import torch
import torch.nn.functional as F
from models import kernels
from models.kernels import build
ext = build.extension()
print(kernels.status())

def mib(n):
    return torch.empty(n << 20, dtype=torch.uint8)

a = mib(50); a.fill_(7); first = a.data_ptr(); del a
print("kept", ext.pool_kept() >> 20)
b = mib(48)  # within a quarter of a kept block: handed out again
print("reused", b.data_ptr() == first, ext.pool_kept() >> 20)
print("small", mib(1).data_ptr() != first, ext.pool_kept() >> 20)  # not the pool's
del b
blocks = [mib(50) for _ in range(3)]
del blocks  # 150 MiB freed with a cap of 100: one block goes back to the OS
print("capped", ext.pool_kept() >> 20)
# oneDNN's convolutions allocate through raw_allocate and free through raw_deleter
w = torch.randn(64, 16, 3, 3, 3)
for size in (8, 128):  # outputs of 2 and 32 MiB
    x = torch.randn(2, 16, 4, size, size)
    y = F.conv3d(x.contiguous(memory_format=torch.channels_last_3d), w, padding=1)
    ref = F.conv3d(x, w, padding=1)
    print("conv", bool(torch.allclose(y, ref, atol=1e-4)))
print("emptied", ext.pool_empty() >> 20, ext.pool_kept())
"""


def probe(tmp_path, switch: str) -> list[str]:
    env = {**os.environ, build.POOL_SWITCH: switch, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(build.extension() is None, reason="the kernel could not be built here")
def test_freed_large_blocks_are_handed_out_again_up_to_the_cap(tmp_path):
    lines = probe(tmp_path, "100")
    assert lines[0].endswith("; large blocks pooled")
    assert lines[1:5] == ["kept 50", "reused True 0", "small True 0", "capped 100"]
    assert lines[5:7] == ["conv True", "conv True"]
    assert lines[7].startswith("emptied ") and int(lines[7].split()[1]) >= 100 and lines[7].endswith(" 0")


@pytest.mark.skipif(build.extension() is None, reason="the kernel could not be built here")
def test_the_pool_switched_off_keeps_nothing(tmp_path):
    lines = probe(tmp_path, "off")
    assert "pooled" not in lines[0]
    assert lines[1:5] == ["kept 0", "reused False 0", "small True 0", "capped 0"]
    assert lines[5:7] == ["conv True", "conv True"]


def test_a_pool_size_that_means_nothing_is_refused_in_one_line(monkeypatch):
    class Module:
        def pool_install(self, cap):
            raise AssertionError("installed")

    for value in ("lots", "-5", "0", "1.5"):
        monkeypatch.setenv(build.POOL_SWITCH, value)
        with pytest.raises(ValueError, match=f"{build.POOL_SWITCH}=.*: use off or a size in MiB"):
            build._install_pool(Module())
    monkeypatch.setenv(build.POOL_SWITCH, "lots")
    for cli in ("benchmarks/run.py --models mfnet --measure speed --quick",
                "benchmarks/train.py --model mfnet"):
        out = subprocess.run([sys.executable, *cli.split()], capture_output=True, text=True,
                             cwd=REPO, timeout=300)
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr[-2000:]
        assert "MFNET_LARGE_BLOCK_POOL='lots': use off or a size in MiB" in out.stderr
