"""The process's runtime settings (benchmarks/machine/runtime.py): the GPU policy set on purpose
and recorded; freed memory given back to the OS between models."""

import os
import subprocess
import sys

import pytest
import torch

from models.kernels import build
from tests.paths import REPO


def test_the_gpu_policy_is_set_on_purpose_and_recorded():
    from benchmarks.machine import runtime

    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        strict = runtime.gpu_policy("fp32")
        assert strict == {"cudnn_benchmark": True, "tf32_matmul": False, "tf32_conv": False,
                          "float32_matmul_precision": "highest"}
        assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert runtime.gpu_policy("tf32")["tf32_conv"] and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = before[:3]
        torch.set_float32_matmul_precision(before[3])


@pytest.mark.slow
def test_memory_freed_by_one_model_goes_back_before_the_next():
    script = """
import torch
from benchmarks.measure import memory
from benchmarks.machine import runtime
runtime.keep_freed_memory()
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
x = torch.ones(300 * 2**20 // 4)  # 300 MB, kept in the heap after it is freed
del x
held = rss()
assert runtime.give_back_memory()
print(held, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    held, after = map(int, out)
    assert held - after > 200  # MB handed back


@pytest.mark.slow
def test_memory_the_kernels_pool_keeps_goes_back_too():
    script = """
import torch
from benchmarks.machine import runtime
from models.kernels import build
ext = build.extension()
if ext is None:
    print("unbuilt"); raise SystemExit
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) // 1024
x = torch.ones(256 * 2**20 // 4)  # 256 MB: a large block, kept by the pool once freed
del x
held, kept = rss(), ext.pool_kept() >> 20
runtime.give_back_memory()
print(kept, ext.pool_kept(), held, rss())
"""
    env = {k: v for k, v in os.environ.items() if k != build.POOL_SWITCH}  # the pool as it is by default
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    if out == ["unbuilt"]:
        pytest.skip("the kernel library could not be built here")
    kept, left, held, after = map(int, out)
    assert kept >= 256 and left == 0  # the pool held the block, and gave it up
    assert held - after > 200  # MB handed back to the OS
