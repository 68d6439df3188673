"""A run's writer (benchmarks/runner/sweep.py): a CUDA run records its GPU policy and its machine."""

import torch

from benchmarks import runner
from benchmarks.machine import environment
from benchmarks.measure import peak
from benchmarks.runner import sweep
from benchmarks.store import (
    ResultsStore,
)


def test_a_cuda_run_records_its_policy_and_sizes_its_peak_for_the_device(monkeypatch):
    from benchmarks.machine import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(environment, "collect", lambda device: {"device_name": "Fake GPU", "threads": 8})
    applied = []
    monkeypatch.setattr(runtime, "gpu_policy", lambda dtype: applied.append(dtype) or {"tf32_conv": False})
    args = runner.parse_args(["--models", "mfnet", "--measure", "speed", "--device", "cuda"])
    writer = sweep.RunWriter(args, ResultsStore("unused"))
    assert applied == ["fp32"] and writer.sidecar["gpu_policy"] == {"tf32_conv": False}
    assert writer.conditions.device_name == "Fake GPU" and writer.conditions.threads == 8
    n, conv_input = peak.peak_problem("cuda")
    assert n ** 3 >= 64 * peak.peak_problem("cpu")[0] ** 3 and conv_input[0] * conv_input[2] >= 128
