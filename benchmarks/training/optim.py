"""SGD with Nesterov momentum and weight decay, the classifier at the full rate where fine-tuning
slows the backbone, and the learning-rate schedule (warm-up, then cosine or steps)."""

import math

import torch
from torch import nn

from benchmarks.training.config import Config
from models.checkpoint import classifier_name


def classifier_parameters(model: nn.Module) -> set[int]:
    """The classifier's parameters, which fine-tuning trains faster than the backbone."""
    name = classifier_name(model)
    return set() if name is None else {id(p) for p in model.get_submodule(name).parameters()}

def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    head = classifier_parameters(model)
    groups = [{"params": [p for p in model.parameters() if id(p) not in head],
               "lr": cfg.lr * cfg.backbone_lr_mult},
              {"params": [p for p in model.parameters() if id(p) in head], "lr": cfg.lr}]
    return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)

# Under a time budget, warm-up ends after this share of the budget at the latest: a model that
# sees half an epoch in its budget (R(2+1)D on the motion benchmark) would otherwise spend all
# of it warming up, at a fraction of the rate every other model trains at.
MAX_WARMUP_SHARE = 0.1

def lr_factor(cfg: Config, progress: float, epoch: float) -> float:
    """Learning-rate multiplier after ``epoch`` epochs of data, at ``progress`` in [0, 1] of the
    whole training: a linear warm-up over the first ``warmup_epochs`` epochs of data, then
    cosine over ``progress``, or x0.1 at each of ``decay_epochs``. Warm-up counts data, not
    progress: with a time budget ``cfg.epochs`` is only a ceiling, so a share of it would end
    the warm-up after a few steps; but with a time budget it also ends once
    ``MAX_WARMUP_SHARE`` of the clock has run, whichever comes first."""
    warm = min(1.0, epoch / cfg.warmup_epochs) if cfg.warmup_epochs else 1.0
    if (cfg.time_budget or cfg.clip_budget) and cfg.warmup_epochs:
        warm = max(warm, min(1.0, progress / MAX_WARMUP_SHARE))
    if cfg.schedule == "cosine":
        return max(warm, 0.01) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(warm, 0.01) * 0.1 ** sum(epoch >= e for e in cfg.decay_epochs)

def progress_of(cfg: Config, steps_per_epoch: int, clock):
    """Training progress in [0, 1] after ``step`` steps; with a time budget, the clock's share of
    it (``clock()``: seconds trained, across resumes), so every model gets a whole schedule in
    the same wall-clock time."""
    if cfg.time_budget:
        return lambda step: min(clock() / cfg.time_budget, 1.0)
    if cfg.clip_budget:
        return lambda step: min(step * cfg.batch_size / cfg.clip_budget, 1.0)
    return lambda step: step / (steps_per_epoch * cfg.epochs)
