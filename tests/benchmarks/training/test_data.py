"""A run's loaders (benchmarks/training/data.py): pinned memory and persistent workers on CUDA
only; no workers for the generated motion benchmark."""

import os

import torch

from benchmarks import training
from benchmarks.training import data as training_data


def test_loaders_pin_memory_and_keep_workers_on_cuda_only():
    cfg = training.Config(model="mfnet", dataset="ucf101", workers=2)
    data = list(range(8))
    cuda, _ = training_data.loader(data, cfg, train=True, world=1, rank=0, batch_size=2, device=torch.device("cuda"))
    cpu, _ = training_data.loader(data, cfg, train=True, world=1, rank=0, batch_size=2, device=torch.device("cpu"))
    assert cuda.pin_memory and cuda.persistent_workers and cuda.num_workers == 2
    assert not cpu.pin_memory and not cpu.persistent_workers
    assert training_data.default_workers(training.Config(model="mfnet", dataset="ucf101")) == min(8, os.cpu_count())
    assert training_data.default_workers(training.Config(model="mfnet", dataset="motion")) == 0
