"""A run's data: the motion benchmark generated on the fly, or a dataset's files in their
official layout, and the loaders that feed each rank."""

import os

import torch
from torch.utils.data import DataLoader, DistributedSampler

from benchmarks.data import datasets
from benchmarks.data.motion import MotionDataset
from benchmarks.training.config import Config


def build_data(cfg: Config, spec):
    """(train set, validation set, test set, number of classes, clip label)."""
    if cfg.dataset == "motion":
        t, h, _ = cfg.clip or (16, 48, 48)
        make = lambda n, seed: MotionDataset(n, frames=t, size=h, seed=seed, mean=spec.mean, std=spec.std)  # noqa: E731
        # train, validation and test clips come from disjoint seeds
        train, val = make(cfg.train_size, cfg.seed * 3 + 1), make(cfg.val_size, cfg.seed * 3 + 2)
        return (_Indexed(train, fresh=True), _Indexed(val), _Indexed(val), MotionDataset.num_classes,
                f"{t}x{h}x{h}")
    config = datasets.clip_config(cfg.dataset, cfg.clip, spec.mean, spec.std)
    kwargs = dict(split=cfg.split, config=config, seed=cfg.seed)
    train, classes = datasets.build(cfg.dataset, cfg.root, train=True, **kwargs)
    val, _ = datasets.build(cfg.dataset, cfg.root, train=False, **kwargs)
    test, _ = datasets.build(cfg.dataset, cfg.root, train=False, clips=cfg.test_clips,
                             crops=cfg.test_crops, **kwargs)
    label = (f"{config.crop}x{config.crop}" if cfg.dataset == "imagenet"
             else f"{config.frames}x{config.crop}x{config.crop}")
    return train, val, test, len(classes), label

class _Indexed(torch.utils.data.Dataset):
    """The motion dataset in the real datasets' item form: (clip, label, video index).
    ``fresh``: draw new clips every epoch (training); otherwise a fixed set (validation)."""

    def __init__(self, base, fresh: bool = False):
        self.base, self.fresh = base, fresh

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        clip, label = self.base[i]
        return clip, label, i

    def set_epoch(self, epoch):
        if self.fresh:
            self.base.set_epoch(epoch)

def default_workers(cfg: Config) -> int:
    """Generated data costs nothing to make; decoding files wants processes of its own."""
    if cfg.workers is not None:
        return cfg.workers
    return 0 if cfg.dataset == "motion" else min(8, os.cpu_count() or 1)

def loader(dataset, cfg: Config, *, train: bool, world: int, rank: int, batch_size: int, device):
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train,
                                 seed=cfg.seed, drop_last=train)
    workers = default_workers(cfg)
    cuda = device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=datasets.collate_skipping, drop_last=train, pin_memory=cuda,
                      persistent_workers=cuda and workers > 0), sampler
