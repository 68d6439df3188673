"""Train and evaluate a registered model on a video dataset.

    python benchmarks/train.py --model mfnet --dataset motion --epochs 3
    python benchmarks/train.py --model mfnet --dataset ucf101 --root /data/UCF101 --split 1 \\
        --preset finetune --checkpoint MFNet3D_Kinetics-400_72.8.pth
    torchrun --nproc_per_node=2 benchmarks/train.py --model mfnet --dataset motion ...

SGD with Nesterov momentum and weight decay, a linear warm-up then a step or cosine schedule,
the authors' recipes as presets (authors-mfnet.md). Per-epoch train and validation top-1 go to
the results store (the report's Fig. 4a); the final multi-view evaluation reports clip-level
top-1 and video-level top-1/top-5 (softmax averaged over N clips x M crops per video).
Checkpoints are written atomically every epoch; ``--resume`` continues a killed run with the
numbers an uninterrupted run gives (CPU, fixed seed). Under ``torchrun`` it runs
DistributedDataParallel (NCCL on GPUs, gloo on CPU) and only rank 0 writes.
"""

import argparse
import datetime as dt
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import models
from benchmarks import datasets, environment, motion, runtime
from benchmarks.motion import MotionDataset
from benchmarks.results import Measurement, ResultsStore, RunConditions, new_run_id

# The authors' recipes (authors-mfnet.md); every value can be overridden on the command line.
PRESETS = {
    # Kinetics from inflated ImageNet weights: batch 128, lr 0.05, step decay x0.1, ~100 epochs
    "kinetics": dict(lr=0.05, batch_size=128, epochs=100, schedule="step", decay_epochs=(60, 80, 90)),
    # UCF-101/HMDB-51 fine-tuning: batch 32, lr 0.005, three x0.1 decays, backbone at 0.2x
    "finetune": dict(lr=0.005, batch_size=32, epochs=30, schedule="step", decay_epochs=(10, 20, 25),
                     backbone_lr_mult=0.2),
    # the motion benchmark, from scratch on a CPU. lr 0.01 at batch 16 was tuned on MF-Net
    # (lr 0.02+ without warm-up did not learn); batch 8 gives the slow models twice the steps in
    # a time budget, at the linearly scaled lr (results: reports/README.md, motion sections)
    "motion": dict(lr=0.005, batch_size=8, epochs=4, schedule="cosine", warmup_epochs=0.5),
}


@dataclass
class Config:
    model: str
    dataset: str = "motion"
    root: str | None = None
    split: int = 1
    preset: str = "motion"
    epochs: int = 4
    batch_size: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4  # the paper's and the authors'
    schedule: str = "cosine"  # step | cosine
    decay_epochs: tuple[int, ...] = ()
    warmup_epochs: float = 0.0
    backbone_lr_mult: float = 1.0
    clip: tuple[int, int, int] | None = None  # T, H, W; None: the dataset's default
    test_clips: int = 1
    test_crops: int = 1
    train_size: int = 600  # motion benchmark: clips per epoch
    val_size: int = 300
    time_budget: float | None = None  # seconds of training, then stop (equal-time protocol)
    eval_only: bool = False
    checkpoint: str | None = None
    resume: bool = False
    results: str = "results"
    out: str = "runs"
    seed: int = 0
    workers: int = 0
    model_args: dict = field(default_factory=dict)
    run_id: str = ""


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="motion", choices=("motion", *datasets.LAYOUTS))
    p.add_argument("--root", help="dataset folder (not needed for motion)")
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--preset", choices=tuple(PRESETS), help="the authors' recipe (default: motion)")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("seed", int),
                       ("test-clips", int), ("test-crops", int), ("train-size", int),
                       ("val-size", int), ("time-budget", float), ("workers", int),
                       ("warmup-epochs", float), ("backbone-lr-mult", float)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--schedule", choices=("step", "cosine"))
    p.add_argument("--clip", help="T,H,W")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--checkpoint", help="weights to start from (or to evaluate)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/<name>/last.pt")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="runs", help="checkpoint folder")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the model builder, e.g. dropout=0")
    a = p.parse_args(argv)
    preset = a.preset or ("motion" if a.dataset == "motion" else "finetune")
    values = {"model": a.model, "dataset": a.dataset, "root": a.root, "split": a.split,
              "preset": preset, **PRESETS[preset]}
    for key in ("epochs", "batch_size", "lr", "seed", "test_clips", "test_crops", "train_size",
                "val_size", "time_budget", "workers", "warmup_epochs", "backbone_lr_mult",
                "schedule"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    try:
        models.get_spec(a.model)
        if a.clip:
            values["clip"] = tuple(int(v) for v in a.clip.replace("x", ",").split(","))
            if len(values["clip"]) != 3 or min(values["clip"]) < 1:
                raise ValueError(f"--clip takes T,H,W, got {a.clip!r}")
        values["model_args"] = {k: _number(v) for k, v in (arg.split("=", 1) for arg in a.model_arg)}
    except ValueError as exc:
        p.exit(2, f"train.py: error: {exc}\n")
    if a.dataset != "motion" and not a.root:
        p.exit(2, f"train.py: error: --dataset {a.dataset} needs --root\n")
    return Config(**values, eval_only=a.eval_only, checkpoint=a.checkpoint, resume=a.resume,
                  results=a.results, out=a.out)


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
        test_short_side=round(crop * 256 / 224), intervals=datasets.INTERVALS[cfg.dataset],
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
    return train, val, test, len(classes), f"{config.frames}x{config.crop}x{config.crop}"


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


def loader(dataset, cfg: Config, *, train: bool, world: int, rank: int, batch_size: int):
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train,
                                 seed=cfg.seed, drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=datasets.collate_skipping, drop_last=train), sampler


# ---- optimisation ----

def classifier_parameters(model: nn.Module) -> set[int]:
    """The last Linear layer's parameters: the classifier, which fine-tuning trains faster."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    return {id(p) for m in last for p in m.parameters()}


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
    if cfg.time_budget and cfg.warmup_epochs:
        warm = max(warm, min(1.0, progress / MAX_WARMUP_SHARE))
    if cfg.schedule == "cosine":
        return max(warm, 0.01) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(warm, 0.01) * 0.1 ** sum(epoch >= e for e in cfg.decay_epochs)


def progress_of(cfg: Config, steps_per_epoch: int, started: float):
    """Training progress in [0, 1] after ``step`` steps; with a time budget, the clock's share of
    it, so every model gets a whole schedule in the same wall-clock time."""
    if cfg.time_budget:
        return lambda step: min((time.monotonic() - started) / cfg.time_budget, 1.0)
    return lambda step: step / (steps_per_epoch * cfg.epochs)


# ---- the loop ----

def run_epoch(model, data, optimizer, scheduler, device, *, train: bool, deadline=None):
    """(mean loss, top-1 %, clips seen, skipped videos, stopped at the deadline)."""
    model.train(train)
    loss_fn = nn.CrossEntropyLoss()
    loss_sum = correct = seen = skipped = 0.0
    stopped = False
    with torch.set_grad_enabled(train):
        for clips, labels, _, skip in data:
            skipped += skip
            if clips is None:
                continue
            clips, labels = clips.to(device), labels.to(device)
            logits = model(clips)
            loss = loss_fn(logits, labels)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            if deadline is not None and time.monotonic() > deadline:
                stopped = True
                break
    loss_sum, correct, seen, skipped = all_sum([loss_sum, correct, seen, skipped], device)
    return loss_sum / max(seen, 1), 100 * correct / max(seen, 1), int(seen), int(skipped), stopped


@torch.no_grad()
def evaluate_views(model, data, device, num_classes: int) -> dict[str, float]:
    """Clip-level top-1 and video-level top-1/top-5 from softmax averaged over every view."""
    model.eval()
    scores: dict[int, torch.Tensor] = {}
    labels: dict[int, int] = {}
    clip_correct = clip_seen = skipped = 0
    for clips, y, videos, skip in data:
        skipped += skip
        if clips is None:
            continue
        probs = model(clips.to(device)).softmax(1).cpu()
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
    videos = sorted(scores)
    top = torch.stack([scores[v] for v in videos]).topk(min(5, num_classes), 1).indices
    truth = torch.tensor([labels[v] for v in videos]).unsqueeze(1)
    return {"top1_clip": 100 * clip_correct / max(clip_seen, 1),
            "top1_video": 100 * (top[:, :1] == truth).any(1).float().mean().item(),
            "top5_video": 100 * (top == truth).any(1).float().mean().item(),
            "videos": len(videos), "skipped_videos": skipped}


def train(cfg: Config) -> dict:
    rank, world, device = init_distributed()
    spec = models.get_spec(cfg.model)
    train_set, val_set, test_set, num_classes, clip_label = build_data(cfg, spec)
    torch.manual_seed(cfg.seed)
    model = models.create_model(cfg.model, num_classes=num_classes, **cfg.model_args).to(device)
    out = Path(cfg.out) / f"{cfg.model}-{cfg.dataset}-s{cfg.seed}"
    last = out / "last.pt"
    start_epoch, run_id = 0, cfg.run_id or new_run_id()
    if cfg.checkpoint and not cfg.resume:
        models.load_checkpoint(model, cfg.checkpoint)
    module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    per_rank_batch = max(1, cfg.batch_size // world)
    train_data, train_sampler = loader(train_set, cfg, train=True, world=world, rank=rank,
                                       batch_size=per_rank_batch)
    val_data, _ = loader(val_set, cfg, train=False, world=world, rank=rank, batch_size=per_rank_batch)
    test_data, _ = loader(test_set, cfg, train=False, world=world, rank=rank, batch_size=per_rank_batch)
    optimizer = make_optimizer(module, cfg)
    steps = max(len(train_data), 1)
    started = time.monotonic()
    progress = progress_of(cfg, steps, started)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, progress(s), s / steps))
    if cfg.resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, run_id = state["epoch"], state["run_id"]
    store = ResultsStore(cfg.results) if rank == 0 else None
    conditions = RunConditions(run_id, device.type, environment.device_name(device.type), "fp32",
                               False, False)
    has_splits = cfg.dataset in ("ucf101", "hmdb51")
    dataset_label = (f"{cfg.dataset}/{cfg.split}" if has_splits else
                     motion.LABEL if cfg.dataset == "motion" else cfg.dataset)
    if store is not None:
        store.check_writable()
        store.write_environment(run_id, environment.collect(device.type)
                                | {"train_config": _jsonable(cfg), "world_size": world})

    def record(rows):
        if store is not None:
            for row in rows:
                row.dataset, row.clip = dataset_label, clip_label
            store.append(rows, conditions, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    deadline = started + cfg.time_budget if cfg.time_budget else None
    clips_seen, epochs_done, skipped_train = 0, float(start_epoch), 0
    for epoch in range(start_epoch, 0 if cfg.eval_only else cfg.epochs):
        torch.manual_seed(cfg.seed * 10_007 + epoch)  # the same data order and augmentation after a resume
        train_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loss, top1, seen, skipped, stopped = run_epoch(model, train_data, optimizer, scheduler, device,
                                                       train=True, deadline=deadline)
        clips_seen += seen
        skipped_train += skipped
        epochs_done = epoch + (seen / (steps * cfg.batch_size) if stopped else 1)
        if cfg.time_budget and not stopped and time.monotonic() > deadline:
            stopped = True
        _, val_top1, _, _, _ = run_epoch(model, val_data, None, None, device, train=False)
        per_epoch = dict(batch_size=cfg.batch_size, epoch=epoch)
        record([Measurement(cfg.model, "accuracy", "train_loss", loss, "nats", "train", **per_epoch),
                Measurement(cfg.model, "accuracy", "train_top1", top1, "%", "train", **per_epoch),
                Measurement(cfg.model, "accuracy", "val_top1", val_top1, "%", "val", views="1x1",
                            **per_epoch)])
        if rank == 0:
            models.save_checkpoint(last, module, optimizer=optimizer.state_dict(),
                                   scheduler=scheduler.state_dict(), epoch=epoch + 1, run_id=run_id)
            print(f"epoch {epoch}: loss {loss:.4f} train top-1 {top1:.1f}% val top-1 {val_top1:.1f}%"
                  + (f" (skipped {skipped} videos)" if skipped else ""), flush=True)
        if stopped:
            break
    train_seconds = time.monotonic() - started
    result = evaluate_views(model if world == 1 else module, test_data, device, num_classes)
    views = f"{cfg.test_clips}x{cfg.test_crops}" if cfg.dataset != "motion" else "1x1"
    rows = [Measurement(cfg.model, "accuracy", k, result[k], "%", "test", views=views,
                        note=protocol(cfg.time_budget, cfg.epochs))
            for k in ("top1_clip", "top1_video", "top5_video")]
    rows.append(Measurement(cfg.model, "accuracy", "skipped_videos", result["skipped_videos"] + skipped_train,
                            "count", note="corrupt, truncated or empty videos skipped (train + test)"))
    if not cfg.eval_only:
        rows += [Measurement(cfg.model, "accuracy", metric, value, unit, "train", cfg.batch_size,
                             note=protocol(cfg.time_budget, cfg.epochs))
                 for metric, value, unit in (("epochs_completed", epochs_done, "epochs"),
                                             ("clips_seen", clips_seen, "clips"),
                                             ("train_seconds", train_seconds, "s"))]
    record(rows)
    if rank == 0:
        print(f"{cfg.model} on {dataset_label}: top-1 clip {result['top1_clip']:.1f}%, video "
              f"{result['top1_video']:.1f}% / top-5 {result['top5_video']:.1f}% over {result['videos']} "
              f"videos ({views} views), {result['skipped_videos'] + skipped_train} skipped", flush=True)
    if dist.is_initialized():
        dist.barrier()
    return result | {"epochs_completed": epochs_done, "clips_seen": clips_seen, "run_id": run_id}


def protocol(time_budget: float | None, epochs: int) -> str:
    """How long every model trained: the same wall-clock budget, or the same epochs."""
    if time_budget:
        return f"protocol: equal time, {time_budget:g} s"
    return f"protocol: equal epochs, {epochs}"


def _jsonable(cfg: Config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def main(argv=None) -> int:
    cfg = parse_args(argv)
    runtime.keep_freed_memory()
    try:
        train(cfg)
    except (datasets.DatasetLayoutError, models.CheckpointError, OSError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
