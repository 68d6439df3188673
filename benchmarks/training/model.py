"""The model a run steps: built and seeded, on the kernels the run asks for, its starting
weights loaded, on the device and memory format, wrapped for DDP and compiled as asked."""

from pathlib import Path

import torch
from torch import nn

import models
from benchmarks.training.config import Config
from benchmarks.training.distributed import match_gradient_strides
from benchmarks.training.precision import memory_format
from models import kernels


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """``cfg``'s model, seeded, on the kernels ``cfg`` asks for (the suite's, or stock)."""
    torch.manual_seed(cfg.seed)
    model = models.create_model(cfg.model, num_classes=num_classes, **cfg.model_args)
    kernels.use_kernels(model, suite=not cfg.stock_kernels)
    return model

def place_model(cfg: Config, spec, num_classes: int, rank: int, world: int, device, last: Path):
    """(the model to step, the plain module to save): built, its starting weights loaded,
    moved to the device and memory format, wrapped for DDP and compiled as asked."""
    model = build_model(cfg, num_classes)
    if cfg.checkpoint and not (cfg.resume and last.exists()):
        message = models.load_checkpoint(model, cfg.checkpoint, new_classifier=not cfg.eval_only)
        if message and rank == 0:
            print(message, flush=True)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=memory_format(len(spec.input_shape) + 1))
    module = model
    if world > 1:
        match_gradient_strides(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return model, module
