"""A training run's settings: one ``Config`` per run, the authors' recipes as presets
(docs/authors-release.md), and the checks that refuse values that cannot mean anything."""

import math
from dataclasses import asdict, dataclass, field

import models
from benchmarks.measure.workload import AUTOCAST

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
    # (models/kernels), which run wherever they can by default; rows say which ran
    stock_kernels: bool = False
    model_args: dict = field(default_factory=dict)
    run_id: str = ""

# what may change between a killed run and its resume without changing its numbers
RESUMABLE = {"root", "eval_only", "checkpoint", "resume", "results", "out", "workers", "run_id",
             "budget_note"}

class SettingsError(ValueError):
    """An option value that cannot mean anything, or one that does not fit the model or data."""

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

def protocol(time_budget: float | None, epochs: int, clip_budget_of: float | None = None) -> str:
    """How long every model trained: the same wall-clock budget, the same budget turned into
    clips at each model's quiet-machine rate (``clip_budget_of`` seconds), or the same epochs."""
    if clip_budget_of:
        return f"equal time as clips, {clip_budget_of:g} s"
    if time_budget:
        return f"equal time, {time_budget:g} s"
    return f"equal epochs, {epochs}"

def jsonable(cfg: Config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
