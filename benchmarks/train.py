"""Train and evaluate a registered model on a video or image dataset.

    python benchmarks/train.py --model mfnet --dataset motion --epochs 3
    python benchmarks/train.py --model mfnet --dataset ucf101 --root /data/UCF101 --split all \\
        --preset finetune --checkpoint MFNet3D_Kinetics-400_72.8.pth --seeds 0,1,2
    python benchmarks/train.py --model mfnet2d --dataset imagenet --root /data/imagenet \\
        --eval-only --checkpoint MFNet2D_ImageNet1k-0000.pth
    torchrun --nproc_per_node=8 benchmarks/train.py --model mfnet --dataset kinetics400 ...

SGD with Nesterov momentum and weight decay, a linear warm-up then a step or cosine schedule,
the authors' recipes as presets (docs/authors-release.md). Per-epoch train and validation
top-1 and clips/s go to the results store (the report's Fig. 4a); the final multi-view
evaluation reports clip-level top-1 and video-level top-1/top-5 (softmax averaged over
N clips x M crops per video). Every accuracy row records where its weights came from: trained
here, fine-tuned from a file, or a file evaluated as is (name and SHA-256 prefix).

Checkpoints are written atomically every epoch with the run's settings, counters and rows;
``--resume`` continues a killed run with the numbers an uninterrupted run gives (CPU, fixed
seed), writes each row once whatever the kill point, refuses other settings, and leaves a
finished run alone. Under ``torchrun`` it runs DistributedDataParallel (NCCL on GPUs, gloo on
CPU) and only rank 0 writes. ``--amp bf16|fp16`` (fp16 with a gradient scaler), channels-last
and ``--compile`` serve GPU runs.
"""

import argparse
import contextlib
import datetime as dt
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import models
from benchmarks import datasets, environment, motion, runtime
from benchmarks.motion import MotionDataset
from benchmarks.results import Measurement, ResultsStore, RunConditions, new_run_id
from benchmarks.workload import AUTOCAST, parse_clip
from models import kernels
from models.checkpoint import FORMAT, CheckpointError, classifier_name, file_digest
from models.errors import first_line

# The authors' recipes (docs/authors-release.md); every value can be overridden on the command line.
PRESETS = {
    # Kinetics from inflated ImageNet weights: batch 128, lr 0.05, step decay x0.1, ~100 epochs
    "kinetics": dict(lr=0.05, batch_size=128, epochs=100, schedule="step", decay_epochs=(60, 80, 90)),
    # UCF-101/HMDB-51 fine-tuning: batch 32, lr 0.005, three x0.1 decays, backbone at 0.2x
    "finetune": dict(lr=0.005, batch_size=32, epochs=30, schedule="step", decay_epochs=(10, 20, 25),
                     backbone_lr_mult=0.2),
    # ImageNet-1k (Table 1's 2D models): the standard ResNet recipe, batch 256, lr 0.1, x0.1 at
    # epochs 30, 60, 90
    "imagenet": dict(lr=0.1, batch_size=256, epochs=100, schedule="step", decay_epochs=(30, 60, 90)),
    # the motion benchmark, from scratch on a CPU. lr 0.01 at batch 16 was tuned on MF-Net
    # (lr 0.02+ without warm-up did not learn); batch 8 gives the slow models twice the steps in
    # a time budget, at the linearly scaled lr (results: reports/README.md, motion sections)
    "motion": dict(lr=0.005, batch_size=8, epochs=4, schedule="cosine", warmup_epochs=0.5),
}
SPLIT_DATASETS = ("ucf101", "hmdb51")  # three official splits; the paper reports their mean
AMP_DTYPES = AUTOCAST  # the harness's autocast map
# a run id becomes a file name: nothing but the characters new_run_id uses
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")


@dataclass
class Config:
    model: str
    dataset: str = "motion"
    root: str | None = None
    split: int = 1
    preset: str = "motion"
    epochs: int = 4
    batch_size: int = 8
    lr: float = 0.005  # the defaults are the motion preset's, the default dataset's
    momentum: float = 0.9
    weight_decay: float = 1e-4  # the paper's and the authors'
    schedule: str = "cosine"  # step | cosine
    decay_epochs: tuple[int, ...] = ()
    warmup_epochs: float = 0.5
    backbone_lr_mult: float = 1.0
    clip: tuple[int, int, int] | None = None  # T, H, W; None: the dataset's default
    test_clips: int = 1
    test_crops: int = 1
    train_size: int = 600  # motion benchmark: clips per epoch
    val_size: int = 300
    time_budget: float | None = None  # seconds of training, then stop (equal-time protocol)
    # clips of training, then stop: a time budget turned into clips at the model's measured
    # quiet-machine rate (run.py's equal-time protocol), so a busy machine cannot cut it short
    clip_budget: int | None = None
    clip_budget_of: float | None = None  # the seconds of training the clip budget stands for
    budget_note: str = ""  # how clip_budget was derived, for the rows
    eval_only: bool = False
    checkpoint: str | None = None
    resume: bool = False
    results: str = "results"
    out: str = "runs"
    seed: int = 0
    workers: int | None = None  # None: 0 for the generated motion data, min(8, CPUs) for files
    amp: str | None = None  # bf16 | fp16: autocast (fp16 with a GradScaler)
    channels_last: bool = False
    compile: bool = False
    # MF-Net's fiber convs and BatchNorm + ReLU on PyTorch's kernels, not the suite's
    # (models/fiber_kernel.py), which run wherever they can by default; rows say which ran
    stock_kernels: bool = False
    model_args: dict = field(default_factory=dict)
    run_id: str = ""


# what may change between a killed run and its resume without changing its numbers
RESUMABLE = {"root", "eval_only", "checkpoint", "resume", "results", "out", "workers", "run_id",
             "budget_note"}


class SettingsError(ValueError):
    """An option value that cannot mean anything, or one that does not fit the model or data."""


def parse_args(argv=None) -> list[Config]:
    """One Config per run: ``--split all`` and ``--seeds`` expand into several."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a file or module whose @models.register_model builders add models")
    p.add_argument("--dataset", default="motion",
                   choices=("motion", *datasets.LAYOUTS, *datasets.IMAGE_LAYOUTS))
    p.add_argument("--root", help="dataset folder (not needed for motion)")
    p.add_argument("--split", default="1", help="1, 2, 3 or all (UCF-101 and HMDB-51)")
    p.add_argument("--seeds", help="comma-separated seeds, one run each (e.g. 0,1,2)")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="the authors' recipe (default: motion, imagenet, or finetune)")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("seed", int),
                       ("test-clips", int), ("test-crops", int), ("train-size", int),
                       ("val-size", int), ("time-budget", float), ("workers", int),
                       ("warmup-epochs", float), ("backbone-lr-mult", float)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--schedule", choices=("step", "cosine"))
    p.add_argument("--clip", help="T,H,W (images: H,W)")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), help="mixed precision (fp16: CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--stock-kernels", action="store_true",
                   help="MF-Net's fiber convs on PyTorch's kernels, not the suite's (the default "
                        "on a CPU, fp32, eager)")
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint as it is")
    p.add_argument("--checkpoint", help="weights to start from (or to evaluate)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/<run>/last.pt")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="runs", help="checkpoint folder")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the model builder, e.g. dropout=0")
    a = p.parse_args(argv)
    try:
        return expand(a)
    except (SettingsError, ValueError) as exc:
        p.exit(2, f"train.py: error: {exc}\n")


def expand(a: argparse.Namespace) -> list[Config]:
    kernels.check_settings()  # an unreadable MFNET_FIBER_KERNEL or MFNET_LARGE_BLOCK_POOL stops here
    for target in a.imports:
        models.import_models(target)
    spec = models.get_spec(a.model)  # ValueError naming the closest names
    preset = a.preset or ("motion" if a.dataset == "motion" else
                          "imagenet" if a.dataset == "imagenet" else "finetune")
    values = {"model": a.model, "dataset": a.dataset, "root": a.root, "preset": preset,
              **PRESETS[preset]}
    for key in ("epochs", "batch_size", "lr", "seed", "test_clips", "test_crops", "train_size",
                "val_size", "time_budget", "workers", "warmup_epochs", "backbone_lr_mult",
                "schedule", "amp"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    if a.clip:
        clip = parse_clip(a.clip, image=a.dataset == "imagenet")
        if clip[1] != clip[2]:
            raise SettingsError(f"--clip {a.clip}: crops are square, so H and W must be equal")
        values["clip"] = clip
    bad_args = [arg for arg in a.model_arg if "=" not in arg]
    if bad_args:
        raise SettingsError(f"--model-arg takes KEY=VALUE, got {bad_args[0]!r}")
    values["model_args"] = {k: _number(v) for k, v in (arg.split("=", 1) for arg in a.model_arg)}
    if a.dataset != "motion" and not a.root:
        raise SettingsError(f"--dataset {a.dataset} needs --root")
    if a.eval_only and not a.checkpoint:
        raise SettingsError("--eval-only needs --checkpoint: there are no weights to evaluate")
    check_values(values)
    check_kind(spec, a.dataset)
    splits = parse_splits(a.split, a.dataset)
    try:
        seeds = ([int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds
                 else [values.pop("seed", 0)])
    except ValueError:
        raise SettingsError(f"--seeds takes comma-separated integers, got {a.seeds!r}") from None
    values.pop("seed", None)
    if not seeds:
        raise SettingsError("--seeds is empty")
    common = dict(eval_only=a.eval_only, checkpoint=a.checkpoint, resume=a.resume, results=a.results,
                  out=a.out, channels_last=a.channels_last, compile=a.compile,
                  stock_kernels=a.stock_kernels)
    configs = [Config(**values, **common, split=split, seed=seed) for split in splits for seed in seeds]
    check_fits(configs[0], spec)
    return configs


def check_values(values: dict) -> None:
    """Refuse values that cannot mean anything, naming the option."""
    def bad(name, value, need):
        raise SettingsError(f"--{name.replace('_', '-')} {value} is invalid: {need}")

    for name in ("lr", "time_budget"):
        value = values.get(name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad(name, value, "need a finite number > 0")
    for name in ("warmup_epochs", "backbone_lr_mult"):
        value = values.get(name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            bad(name, value, "need a finite number >= 0")
    for name in ("epochs", "batch_size", "train_size", "val_size", "test_clips", "test_crops"):
        if values.get(name, 1) < 1:
            bad(name, values[name], "need an integer >= 1")
    if values.get("workers") is not None and values["workers"] < 0:
        bad("workers", values["workers"], "need an integer >= 0")


def check_kind(spec, dataset: str) -> None:
    if dataset == "imagenet" and spec.is_video:
        raise SettingsError(f"{spec.name} takes clips; ImageNet needs an image model (e.g. mfnet2d)")
    if dataset != "imagenet" and not spec.is_video:
        frames = f"{spec.name}_frames"
        hint = (f"; {frames} runs it on every frame" if frames in models.list_models() else "")
        raise SettingsError(f"{spec.name} is an image model and {dataset} has clips{hint}")


def parse_splits(text: str, dataset: str) -> list[int]:
    if text == "all":
        if dataset not in SPLIT_DATASETS:
            raise SettingsError(f"--split all: {dataset} has one split; only "
                                f"{' and '.join(SPLIT_DATASETS)} have three")
        return [1, 2, 3]
    try:
        return [int(text)]
    except ValueError:
        raise SettingsError(f"--split takes 1, 2, 3 or all, got {text!r}") from None


def input_shape(cfg: Config) -> tuple[int, ...]:
    """(C, T, H, W) for clips or (C, H, W) for images, at the run's clip."""
    if cfg.dataset == "imagenet":
        side = cfg.clip[1] if cfg.clip else 224
        return (3, side, side)
    if cfg.dataset == "motion":
        t, h, _ = cfg.clip or (16, 48, 48)
        return (3, t, h, h)
    t, h, _ = cfg.clip or (16, 224, 224)
    return (3, t, h, h)


def check_fits(cfg: Config, spec) -> None:
    """Run the model once on the meta device at the run's input: a clip too small for its
    pooling fails here, with one line, before any data is read."""
    try:
        models.check_input(cfg.model, (2, *input_shape(cfg)), **cfg.model_args)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---- distributed ----

def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return (dist.get_rank() if world > 1 else 0), world, device


def all_sum(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---- data ----

def clip_config(cfg: Config, spec) -> datasets.ClipConfig:
    frames, crop = (cfg.clip[0], cfg.clip[1]) if cfg.clip else (16, 224)
    return datasets.ClipConfig(
        frames=frames, crop=crop, short_side=(crop, round(crop * 288 / 224)),
        test_short_side=round(crop * 256 / 224), intervals=datasets.INTERVALS.get(cfg.dataset, (1,)),
        mean=spec.mean, std=spec.std)


def build_data(cfg: Config, spec):
    """(train set, validation set, test set, number of classes, clip label)."""
    if cfg.dataset == "motion":
        t, h, _ = cfg.clip or (16, 48, 48)
        make = lambda n, seed: MotionDataset(n, frames=t, size=h, seed=seed, mean=spec.mean, std=spec.std)  # noqa: E731
        # train, validation and test clips come from disjoint seeds
        train, val = make(cfg.train_size, cfg.seed * 3 + 1), make(cfg.val_size, cfg.seed * 3 + 2)
        return (_Indexed(train, fresh=True), _Indexed(val), _Indexed(val), MotionDataset.num_classes,
                f"{t}x{h}x{h}")
    config = clip_config(cfg, spec)
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


# ---- optimisation ----

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


@dataclass
class Precision:
    """How steps run: autocast dtype (None: fp32), gradient scaler, memory format."""

    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False

    def autocast(self, device: torch.device):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp)

    def inputs(self, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
        clips = clips.to(device, non_blocking=True)
        if self.channels_last:
            clips = clips.contiguous(memory_format=memory_format(clips.dim()))
        return clips


def memory_format(dims: int) -> torch.memory_format:
    return torch.channels_last_3d if dims == 5 else torch.channels_last


def make_precision(cfg: Config, device: torch.device) -> Precision:
    if cfg.amp == "fp16" and device.type != "cuda":
        raise SettingsError("--amp fp16 needs a CUDA GPU (fp16 autocast on a CPU has no scaler "
                            "support here); use --amp bf16 or no --amp")
    amp = AMP_DTYPES.get(cfg.amp) if cfg.amp else None
    # fp16's narrow range underflows small gradients: scale the loss (bf16 needs none)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return Precision(amp, scaler, cfg.channels_last)


def match_gradient_strides(model: nn.Module) -> None:
    """Give every gradient its parameter's strides before DDP's reducer sees it. MF-Net's
    channels-last 1x1x1 convs return weight gradients whose size-1 dimensions carry
    channels-last strides; DDP then warns ("Grad strides do not match bucket view strides")
    and takes a slow path on every step. Only mismatched gradients are copied."""
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(partial(_with_strides_of, param))


def _with_strides_of(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == param.stride() or grad.layout != torch.strided:
        return grad
    return torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype,
                               device=grad.device).copy_(grad)


# ---- the loop ----

class EpochProgress:
    """A progress bar per epoch on rank 0, with clips/s and the time left (off elsewhere)."""

    def __init__(self, enabled: bool):
        # on stderr, and only on a terminal: a log file gets the one line per epoch instead
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} batches"),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                            console=console, transient=True,
                            disable=not (enabled and console.is_terminal))

    @contextlib.contextmanager
    def epoch(self, description: str, total: int):
        with self.bar:
            task = self.bar.add_task(description, total=total, rate="")
            started = time.monotonic()

            def advance(clips: int):
                elapsed = max(time.monotonic() - started, 1e-9)
                advance.clips += clips
                self.bar.update(task, advance=1, rate=f"{advance.clips / elapsed:.1f} clips/s")

            advance.clips = 0
            yield advance
            self.bar.remove_task(task)


def run_epoch(model, data, optimizer, scheduler, device, *, train: bool, deadline=None,
              precision: Precision | None = None, progress=None):
    """(mean loss, top-1 %, clips seen, skipped videos, stopped at the deadline)."""
    precision = precision or Precision()
    model.train(train)
    loss_fn = nn.CrossEntropyLoss()
    loss_sum = correct = seen = skipped = 0.0
    stopped = False
    with torch.set_grad_enabled(train):
        for clips, labels, _, skip in data:
            skipped += skip
            if clips is None:
                continue
            clips, labels = precision.inputs(clips, device), labels.to(device)
            with precision.autocast(device):
                logits = model(clips)
                loss = loss_fn(logits.float(), labels)
            if train:
                optimizer.zero_grad(set_to_none=True)
                if precision.scaler is not None:
                    precision.scaler.scale(loss).backward()
                    precision.scaler.step(optimizer)
                    precision.scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            if progress is not None:
                progress(len(labels))
            if deadline is not None and deadline(int(seen)):
                stopped = True
                break
    loss_sum, correct, seen, skipped = all_sum([loss_sum, correct, seen, skipped], device)
    return loss_sum / max(seen, 1), 100 * correct / max(seen, 1), int(seen), int(skipped), stopped


@torch.no_grad()
def evaluate_views(model, data, device, num_classes: int,
                   precision: Precision | None = None) -> dict[str, float] | None:
    """Clip-level top-1 and video-level top-1/top-5 from softmax averaged over every view;
    None when no test video could be decoded."""
    precision = precision or Precision()
    model.eval()
    scores: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    clip_correct = clip_seen = skipped = 0
    for clips, y, videos, skip in data:
        skipped += skip
        if clips is None:
            continue
        with precision.autocast(device):
            probs = model(precision.inputs(clips, device)).float().softmax(1).cpu()
        clip_correct += (probs.argmax(1) == y).sum().item()
        clip_seen += len(y)
        for p, label, video in zip(probs, y.tolist(), videos.tolist()):
            scores[video] = scores.get(video, 0) + p
            labels[video] = label
    if dist.is_initialized():  # gather every rank's per-video scores
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (scores, labels, clip_correct, clip_seen, skipped))
        scores, labels, clip_correct, clip_seen, skipped = {}, {}, 0, 0, 0
        for s, lab, c, n, k in gathered:
            for video, p in s.items():
                scores[video] = scores.get(video, 0) + p
            labels.update(lab)
            clip_correct, clip_seen, skipped = clip_correct + c, clip_seen + n, skipped + k
    if not scores:
        return None
    videos = sorted(scores)
    top = torch.stack([scores[v] for v in videos]).topk(min(5, num_classes), 1).indices
    truth = torch.tensor([labels[v] for v in videos]).unsqueeze(1)
    return {"top1_clip": 100 * clip_correct / max(clip_seen, 1),
            "top1_video": 100 * (top[:, :1] == truth).any(1).float().mean().item(),
            "top5_video": 100 * (top == truth).any(1).float().mean().item(),
            "videos": len(videos), "skipped_videos": skipped}


# ---- where the weights came from, and the run's checkpoint ----

def weights_of(cfg: Config) -> str:
    """``trained``, ``finetuned:<file>@<sha256 prefix>`` or ``file:<file>@<sha256 prefix>``."""
    if not cfg.checkpoint:
        return "trained"
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    kind = "file" if cfg.eval_only else "finetuned"
    return f"{kind}:{path.name}@{file_digest(path)}"


def kernels_of(cfg: Config, device) -> str:
    """The rows' kernels condition: suite where the model was put on the suite's kernel and it
    runs under the run's conditions, else stock (as ``run.py`` labels its rows)."""
    if cfg.stock_kernels or kernels.why_not(device.type, cfg.amp or "fp32", cfg.compile):
        return "stock"
    return "suite"


def settings_of(cfg: Config, weights: str) -> dict:
    """What defines a run's numbers: a resume with anything else is refused."""
    values = {k: v for k, v in _jsonable(cfg).items() if k not in RESUMABLE}
    return values | {"weights": weights}


def run_folder(cfg: Config) -> Path:
    split = f"-split{cfg.split}" if cfg.dataset in SPLIT_DATASETS else ""
    return Path(cfg.out) / f"{cfg.model}-{cfg.dataset}{split}-s{cfg.seed}"


def read_run_state(path: Path, device) -> dict:
    """A run's ``last.pt``, checked before anything in it is used; one-line errors."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle with globals, not a torch file
        reason = first_line(exc)
        raise CheckpointError(f"cannot resume from {path}: {reason}") from None
    need = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "run_id": str,
            "settings": dict, "counters": dict, "rows": list}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"cannot resume from {path}: not a training checkpoint of this suite")
    wrong = [k for k, kind in need.items() if not isinstance(state.get(k), kind)]
    if wrong:
        raise CheckpointError(f"cannot resume from {path}: missing or malformed {', '.join(wrong)}")
    if not RUN_ID.fullmatch(state["run_id"]):
        raise CheckpointError(f"cannot resume from {path}: run id {state['run_id']!r} is not a "
                              "run id (letters, digits, - and _ only)")
    return state


def settings_difference(saved: dict, now: dict) -> str:
    changed = [f"--{k.replace('_', '-')} {now.get(k)!r} (the checkpoint's: {saved.get(k)!r})"
               for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return "; ".join(changed)


# ---- one run ----

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


class Session:
    """One run's state across resumes: the optimiser and schedule, the counters and clock, the
    rows written so far, and the results store (rank 0 only). Rows are checkpointed before
    they are stored, and stored only where the store does not hold them yet, so each row is
    written once whatever the kill point."""

    def __init__(self, cfg: Config, module: nn.Module, steps: int, precision: Precision,
                 weights: str, last: Path):
        self.cfg, self.module, self.precision, self.last = cfg, module, precision, last
        self.optimizer = make_optimizer(module, cfg)
        self.counters = {"clips_seen": 0, "train_seconds": 0.0, "skipped_train": 0, "epochs_done": 0.0}
        self.started, self.prior_seconds = time.monotonic(), 0.0
        progress = progress_of(cfg, steps, self.clock)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(cfg, progress(s), s / steps))
        self.settings = settings_of(cfg, weights)
        self.weights, self.start_epoch, self.run_id = weights, 0, cfg.run_id or new_run_id()
        self.rows: list[dict] = []
        self.final: dict | None = None
        self.store = None

    def clock(self) -> float:
        """Seconds trained (validation included), across resumes."""
        return self.prior_seconds + time.monotonic() - self.started

    def restore(self, device) -> None:
        """Continue from ``last.pt``: the same settings, or a one-line refusal naming them."""
        state = read_run_state(self.last, device)
        if state["settings"] != self.settings:
            raise SettingsError(f"--resume: {self.last} was trained with other settings: "
                                f"{settings_difference(state['settings'], self.settings)}; "
                                "use another --out, or the checkpoint's settings")
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.precision.scaler is not None and "scaler" in state:
                self.precision.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"cannot resume from {self.last}: "
                                  f"{first_line(exc)}") from None
        self.start_epoch, self.run_id = state["epoch"], state["run_id"]
        self.counters.update({k: state["counters"][k] for k in self.counters if k in state["counters"]})
        self.prior_seconds = float(self.counters["train_seconds"])
        self.rows, self.final = state["rows"], state.get("final")

    def open_store(self, device, world: int, dataset: str, clip: str, extra: dict) -> None:
        self.store = ResultsStore(self.cfg.results)
        self.conditions = RunConditions(self.run_id, device.type, environment.device_name(device.type),
                                        self.cfg.amp or "fp32", self.cfg.channels_last, self.cfg.compile,
                                        torch.get_num_threads(), kernels_of(self.cfg, device))
        self.dataset, self.clip = dataset, clip
        self.store.check_writable()
        self.store.write_environment(self.run_id, environment.collect(device.type) | extra
                                     | {"train_config": _jsonable(self.cfg), "world_size": world})

    def record(self, rows: list[dict]) -> None:
        """Store the rows the store does not hold yet for this run."""
        if self.store is None or not rows:
            return
        frame = self.store.frame()
        held = frame[frame["run_id"] == self.run_id]
        present = {(m, None if pd.isna(e) else int(e)) for m, e in zip(held["metric"], held["epoch"])}
        fresh = [Measurement(**r) for r in rows if (r["metric"], r.get("epoch")) not in present]
        for row in fresh:
            row.dataset, row.clip = self.dataset, self.clip
            row.weights, row.seed = self.weights, self.cfg.seed
        if fresh:
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            self.store.append(fresh, self.conditions, now)

    def checkpoint(self, epoch: int, **extra) -> None:
        if self.store is None or self.cfg.eval_only:
            return
        scaler = {"scaler": self.precision.scaler.state_dict()} if self.precision.scaler else {}
        models.save_checkpoint(
            self.last, self.module, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), epoch=epoch, run_id=self.run_id,
            settings=self.settings, counters=dict(self.counters), rows=self.rows, **scaler, **extra)

    def epoch_done(self, rows: list[dict], epoch: int) -> None:
        """The checkpoint first: a kill between the two leaves rows to store on resume."""
        self.rows = self.rows + rows
        self.checkpoint(epoch + 1)
        self.record(rows)


def epoch_rows(cfg: Config, epoch: int, loss: float, top1: float, val_top1: float,
               clips_per_s: float) -> list[dict]:
    common = dict(model=cfg.model, measurement="accuracy", batch_size=cfg.batch_size, epoch=epoch)
    return [dict(metric="train_loss", value=loss, unit="nats", phase="train", **common),
            dict(metric="train_top1", value=top1, unit="%", phase="train", **common),
            dict(metric="val_top1", value=val_top1, unit="%", phase="val", views="1x1", **common),
            dict(metric="epoch_clips_per_s", value=clips_per_s, unit="clips/s", phase="train",
                 note="training clips per second over the epoch, data loading included", **common)]


def final_rows(cfg: Config, result: dict | None, test_items: int, counters: dict,
               views: str) -> tuple[list[dict], dict]:
    """The test rows (or an error row when no test video decoded) and how far training got."""
    common = dict(model=cfg.model, measurement="accuracy")
    trained = "" if cfg.eval_only else protocol(cfg.time_budget, cfg.epochs, cfg.clip_budget_of)
    note = f"protocol: {trained}" if trained else "evaluated as is"
    if result is None:
        rows = [dict(metric="top1_video", value=None, unit="%", phase="test", views=views,
                     status="error", error=f"no test video could be decoded ({test_items} items skipped)",
                     **common)]
        result = {"skipped_videos": test_items, "videos": 0}
    else:
        rows = [dict(metric=k, value=result[k], unit="%", phase="test", views=views, note=note,
                     protocol=trained, **common)
                for k in ("top1_clip", "top1_video", "top5_video")]
    rows.append(dict(metric="skipped_videos", value=result["skipped_videos"] + counters["skipped_train"],
                     unit="count", note="failed decodes skipped (train + test; a bad test video "
                                        "counts once per test clip): corrupt, truncated, empty or "
                                        "oversized files", **common))
    if not cfg.eval_only:
        rows += [dict(metric=metric, value=value, unit=unit, phase="train", batch_size=cfg.batch_size,
                      note=note, protocol=trained, **common)
                 for metric, value, unit in (("epochs_completed", counters["epochs_done"], "epochs"),
                                             ("clips_seen", counters["clips_seen"], "clips"),
                                             ("train_seconds", counters["train_seconds"], "s"))]
        if cfg.clip_budget:
            rows.append(dict(metric="clip_budget", value=cfg.clip_budget, unit="clips", phase="train",
                             batch_size=cfg.batch_size, note=cfg.budget_note, protocol=trained, **common))
    result = result | {"clips_seen": counters["clips_seen"], "epochs_completed": counters["epochs_done"]}
    return rows, result


def train(cfg: Config) -> dict:
    """Train (unless ``eval_only``) and evaluate one run; returns the final numbers."""
    rank, world, device = init_distributed()
    spec = models.get_spec(cfg.model)
    precision = make_precision(cfg, device)
    # cuDNN's fastest algorithms, and fp32 math unless autocast is asked for: set and recorded
    policy = {"gpu_policy": runtime.gpu_policy(cfg.amp or "fp32")} if device.type == "cuda" else {}
    weights = weights_of(cfg)
    train_set, val_set, test_set, num_classes, clip_label = build_data(cfg, spec)
    folder = run_folder(cfg)
    last = folder / "last.pt"
    model, module = place_model(cfg, spec, num_classes, rank, world, device, last)
    make_loader = dict(cfg=cfg, world=world, rank=rank, batch_size=max(1, cfg.batch_size // world),
                       device=device)
    train_data, train_sampler = loader(train_set, train=True, **make_loader)
    val_data, _ = loader(val_set, train=False, **make_loader)
    test_data, _ = loader(test_set, train=False, **make_loader)
    steps = max(len(train_data), 1)
    run = Session(cfg, module, steps, precision, weights, last)
    if cfg.resume and last.exists():
        run.restore(device)
    dataset_label = (f"{cfg.dataset}/{cfg.split}" if cfg.dataset in SPLIT_DATASETS else
                     motion.LABEL if cfg.dataset == "motion" else cfg.dataset)
    if rank == 0:
        run.open_store(device, world, dataset_label, clip_label, policy)
    run.record(run.rows)  # rows a kill kept out of the store, after their checkpoint was written
    if run.final is not None:  # finished before: its rows are stored (now), nothing to re-run
        run.record(run.final["rows"])
        if rank == 0:
            print(f"{folder.name}: already finished (run {run.run_id}); nothing to do", flush=True)
        return run.final["result"] | {"run_id": run.run_id}

    deadline = None  # called with the clips seen so far in the epoch
    if cfg.time_budget:
        deadline = lambda seen: run.clock() > cfg.time_budget  # noqa: E731
    elif cfg.clip_budget:
        deadline = lambda seen: run.counters["clips_seen"] + seen >= cfg.clip_budget  # noqa: E731
    bar = EpochProgress(enabled=rank == 0)
    for epoch in range(run.start_epoch, 0 if cfg.eval_only else cfg.epochs):
        torch.manual_seed(cfg.seed * 10_007 + epoch)  # the same data order and augmentation after a resume
        train_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        epoch_start = time.monotonic()
        with bar.epoch(f"epoch {epoch + 1}/{cfg.epochs}", len(train_data)) as advance:
            loss, top1, seen, skipped, stopped = run_epoch(
                model, train_data, run.optimizer, run.scheduler, device, train=True,
                deadline=deadline, precision=precision, progress=advance)
        rate = seen / max(time.monotonic() - epoch_start, 1e-9)
        run.counters["clips_seen"] += seen
        run.counters["skipped_train"] += skipped
        run.counters["epochs_done"] = epoch + (seen / (steps * cfg.batch_size) if stopped else 1)
        stopped = stopped or (deadline is not None and deadline(0))
        _, val_top1, _, _, _ = run_epoch(model, val_data, None, None, device, train=False,
                                         precision=precision)
        run.counters["train_seconds"] = run.clock()
        run.epoch_done(epoch_rows(cfg, epoch, loss, top1, val_top1, rate), epoch)
        if rank == 0:
            print(f"epoch {epoch}: loss {loss:.4f} train top-1 {top1:.1f}% val top-1 {val_top1:.1f}%"
                  f" ({rate:.1f} clips/s)" + (f" (skipped {skipped} videos)" if skipped else ""),
                  flush=True)
        if stopped:
            break
    result = evaluate_views(model if world == 1 else module, test_data, device, num_classes, precision)
    views = f"{cfg.test_clips}x{cfg.test_crops}" if cfg.dataset not in ("motion", "imagenet") else "1x1"
    rows, result = final_rows(cfg, result, len(test_set), run.counters, views)
    run.checkpoint(cfg.epochs, final={"rows": rows, "result": result})
    run.record(rows)
    if rank == 0:
        print_final(cfg, dataset_label, result, run.counters["skipped_train"], views)
    if dist.is_initialized():
        dist.barrier()
    return result | {"run_id": run.run_id}


def print_final(cfg: Config, dataset: str, result: dict, skipped_train: int, views: str) -> None:
    skipped = result["skipped_videos"] + skipped_train
    if "top1_video" in result:
        print(f"{cfg.model} on {dataset}: top-1 clip {result['top1_clip']:.1f}%, video "
              f"{result['top1_video']:.1f}% / top-5 {result['top5_video']:.1f}% over "
              f"{result['videos']} videos ({views} views), {skipped} skipped", flush=True)
    else:
        print(f"{cfg.model} on {dataset}: no test video could be decoded ({skipped} skipped); an "
              "error row was stored", flush=True)


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


def protocol(time_budget: float | None, epochs: int, clip_budget_of: float | None = None) -> str:
    """How long every model trained: the same wall-clock budget, the same budget turned into
    clips at each model's quiet-machine rate (``clip_budget_of`` seconds), or the same epochs."""
    if clip_budget_of:
        return f"equal time as clips, {clip_budget_of:g} s"
    if time_budget:
        return f"equal time, {time_budget:g} s"
    return f"equal epochs, {epochs}"


def _jsonable(cfg: Config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def main(argv=None) -> int:
    configs = parse_args(argv)
    runtime.keep_freed_memory()
    failed = 0
    try:
        for cfg in configs:
            failed += "top1_video" not in train(cfg)
    except (datasets.DatasetLayoutError, CheckpointError, SettingsError, OSError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"train.py: interrupted; every finished epoch is checkpointed under {configs[0].out}/ "
              "and its rows are stored: run the same command with --resume to continue",
              file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
