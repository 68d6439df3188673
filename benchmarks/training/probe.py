"""A model's training rate on this machine now, for the motion benchmark's clip budgets."""

import time

from torch import nn
from torch.utils.data import DataLoader

import models
from benchmarks.data import datasets
from benchmarks.training.config import Config
from benchmarks.training.data import build_data
from benchmarks.training.model import build_model
from benchmarks.training.optim import make_optimizer


def probe_rate(cfg: Config, seconds: float) -> float:
    """Training clips/s of ``cfg``'s model on its data on this machine now, data making
    included: after two warm-up steps, steps are timed for ``seconds`` (three at least) and the
    median of the faster half is kept, so a passing load hardly moves it."""
    spec = models.get_spec(cfg.model)
    train_set, _, _, num_classes, _ = build_data(cfg, spec)
    model = build_model(cfg, num_classes).train()
    optimizer = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    data = DataLoader(train_set, batch_size=cfg.batch_size, num_workers=0, drop_last=True,
                      collate_fn=datasets.collate_skipping)

    def batches():
        while True:
            yield from data

    times, started = [], time.perf_counter()
    last = started
    for step, (clips, labels, _, _) in enumerate(batches()):  # a step's time includes its data
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(clips), labels).backward()
        optimizer.step()
        now = time.perf_counter()
        if step >= 2:
            times.append(now - last)
        last = now
        if step >= 5 and now - started > seconds:
            break
    fastest = sorted(times)[: max(1, len(times) // 2)]
    return cfg.batch_size / fastest[len(fastest) // 2]
