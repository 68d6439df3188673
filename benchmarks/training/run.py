"""One training run from start to finish (``train``), and the commands' entry (``main``)."""

import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import models
from benchmarks.data import datasets, motion
from benchmarks.machine import runtime
from benchmarks.training.config import SPLIT_DATASETS, Config, SettingsError
from benchmarks.training.data import build_data, loader
from benchmarks.training.distributed import init_distributed
from benchmarks.training.loop import EpochProgress, evaluate_views, run_epoch
from benchmarks.training.model import place_model
from benchmarks.training.precision import make_precision
from benchmarks.training.state import Session, epoch_rows, final_rows, holding, run_folder, weights_of
from models.checkpoint import CheckpointError


@dataclass
class Prepared:
    """One run, ready to train: where it runs, its model, data and session (resumed where asked)."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    precision: object
    model: torch.nn.Module  # what steps: DDP-wrapped and compiled as asked
    module: torch.nn.Module  # the plain model, what is saved
    train_set: object
    test_set: object
    num_classes: int
    data: dict  # "train", "val", "test" loaders, and the train sampler
    steps: int
    session: Session
    dataset_label: str


def train(cfg: Config) -> dict:
    """Train (unless ``eval_only``) and evaluate one run; returns the final numbers. One process
    trains into a run folder at a time (``holding``; rank 0 holds it for every rank)."""
    if cfg.eval_only or int(os.environ.get("RANK", "0")) != 0:
        return train_held(cfg)
    with holding(run_folder(cfg)):
        return train_held(cfg)


def train_held(cfg: Config) -> dict:
    run = prepare(cfg)
    session = run.session
    session.record(session.rows)  # rows a kill kept out of the store, after their checkpoint was written
    if session.final is not None:  # finished before: its rows are stored (now), nothing to re-run
        session.record(session.final["rows"])
        if run.rank == 0:
            print(f"{run_folder(cfg).name}: already finished (run {session.run_id}); nothing to do", flush=True)
        return session.final["result"] | {"run_id": session.run_id}
    failure = train_epochs(run)
    return not_trained(run, failure) if failure else finish(run)


def prepare(cfg: Config) -> Prepared:
    """The process group, the model on its device, the data and loaders, and the session (its
    store opened on rank 0, its state restored where ``--resume`` finds a checkpoint)."""
    rank, world, device = init_distributed()
    spec = models.get_spec(cfg.model)
    precision = make_precision(cfg, device)
    # cuDNN's fastest algorithms, and fp32 math unless autocast is asked for: set and recorded
    policy = {"gpu_policy": runtime.gpu_policy(cfg.amp or "fp32")} if device.type == "cuda" else {}
    weights = weights_of(cfg)
    train_set, val_set, test_set, num_classes, clip_label = build_data(cfg, spec)
    last = run_folder(cfg) / "last.pt"
    model, module = place_model(cfg, spec, num_classes, rank, world, device, last)
    make_loader = dict(cfg=cfg, world=world, rank=rank, batch_size=max(1, cfg.batch_size // world), device=device)
    train_data, train_sampler = loader(train_set, train=True, **make_loader)
    data = {"train": train_data, "sampler": train_sampler, "val": loader(val_set, train=False, **make_loader)[0],
            "test": loader(test_set, train=False, **make_loader)[0]}
    steps = max(len(train_data), 1)
    session = Session(cfg, module, steps, precision, weights, last)
    if cfg.resume and last.exists():
        session.restore(device)
    dataset_label = (f"{cfg.dataset}/{cfg.split}" if cfg.dataset in SPLIT_DATASETS else
                     motion.LABEL if cfg.dataset == "motion" else cfg.dataset)
    if rank == 0:
        session.open_store(device, world, dataset_label, clip_label, policy)
    return Prepared(cfg, rank, world, device, precision, model, module, train_set, test_set, num_classes, data,
                    steps, session, dataset_label)


def train_epochs(run: Prepared) -> str:
    """The epochs left, each checkpointed then recorded, until the epochs, the time budget or
    the clip budget run out; why training stopped short where it could not train ("" else)."""
    cfg, session = run.cfg, run.session
    deadline = None  # called with the clips seen so far in the epoch
    if cfg.time_budget:
        deadline = lambda seen: session.clock() > cfg.time_budget  # noqa: E731
    elif cfg.clip_budget:
        deadline = lambda seen: session.counters["clips_seen"] + seen >= cfg.clip_budget  # noqa: E731
    bar = EpochProgress(enabled=run.rank == 0)
    for epoch in range(session.start_epoch, 0 if cfg.eval_only else cfg.epochs):
        torch.manual_seed(cfg.seed * 10_007 + epoch)  # the same data order and augmentation after a resume
        run.data["sampler"].set_epoch(epoch)
        run.train_set.set_epoch(epoch)
        epoch_start = time.monotonic()
        with bar.epoch(f"epoch {epoch + 1}/{cfg.epochs}", len(run.data["train"])) as advance:
            loss, top1, seen, skipped, stopped = run_epoch(
                run.model, run.data["train"], session.optimizer, session.scheduler, run.device, train=True,
                deadline=deadline, precision=run.precision, progress=advance)
        rate = seen / max(time.monotonic() - epoch_start, 1e-9)
        session.counters["clips_seen"] += seen
        session.counters["skipped_train"] += skipped
        session.counters["epochs_done"] = epoch + (seen / (run.steps * cfg.batch_size) if stopped else 1)
        stopped = stopped or (deadline is not None and deadline(0))
        _, val_top1, val_seen, val_skipped, _ = run_epoch(run.model, run.data["val"], None, None, run.device,
                                                          train=False, precision=run.precision)
        session.counters["undecoded_val_epochs"] += not val_seen
        session.counters["train_seconds"] = session.clock()
        rows = epoch_rows(cfg, epoch, (loss, top1, seen, skipped), (val_top1, val_seen, val_skipped), rate)
        if not seen:  # nothing to checkpoint: the model is as it was
            session.record(rows)
            return rows[0]["error"]
        session.epoch_done(rows, epoch)
        if run.rank == 0:
            val = f"{val_top1:.1f}%" if val_seen else f"not measured ({rows[2]['error']})"
            print(f"epoch {epoch}: loss {loss:.4f} train top-1 {top1:.1f}% val top-1 {val}"
                  f" ({rate:.1f} clips/s)" + (f" (skipped {skipped} videos)" if skipped else ""), flush=True)
        if stopped:
            break
    return ""


def not_trained(run: Prepared, failure: str) -> dict:
    """A run that could not train: an error row in place of the test accuracy (an untrained
    model's is no result of this run), and no evaluation."""
    cfg, session = run.cfg, run.session
    common = dict(model=cfg.model, measurement="accuracy")
    session.record([dict(metric="top1_video", value=None, unit="%", phase="test", status="error",
                         error=f"not trained: {failure}", **common),
                    dict(metric="skipped_videos", value=session.counters["skipped_train"], unit="count",
                         note="failed decodes skipped in training", **common)])
    if run.rank == 0:
        print(f"{cfg.model} on {run.dataset_label}: not trained: {failure}; an error row was stored",
              file=sys.stderr, flush=True)
    return {"failed": failure, "run_id": session.run_id}


def finish(run: Prepared) -> dict:
    """The multi-view evaluation, its rows checkpointed then recorded; the final numbers."""
    cfg, session = run.cfg, run.session
    result = evaluate_views(run.model if run.world == 1 else run.module, run.data["test"], run.device,
                            run.num_classes, run.precision)
    views = f"{cfg.test_clips}x{cfg.test_crops}" if cfg.dataset not in ("motion", "imagenet") else "1x1"
    rows, result = final_rows(cfg, result, len(run.test_set), session.counters, views)
    session.checkpoint(cfg.epochs, final={"rows": rows, "result": result})
    session.record(rows)
    if run.rank == 0:
        print_final(cfg, run.dataset_label, result, session.counters["skipped_train"], views)
    if dist.is_initialized():
        dist.barrier()
    return result | {"run_id": session.run_id, "undecoded_val_epochs": session.counters["undecoded_val_epochs"]}


def print_final(cfg: Config, dataset: str, result: dict, skipped_train: int, views: str) -> None:
    skipped = result["skipped_videos"] + skipped_train
    if "top1_video" in result:
        print(f"{cfg.model} on {dataset}: top-1 clip {result['top1_clip']:.1f}%, video "
              f"{result['top1_video']:.1f}% / top-5 {result['top5_video']:.1f}% over "
              f"{result['videos']} videos ({views} views), {skipped} skipped", flush=True)
    else:
        print(f"{cfg.model} on {dataset}: no test video could be decoded ({skipped} skipped); an "
              "error row was stored", flush=True)

def train_all(configs: list[Config]) -> int:
    """Every run of ``configs`` in turn; the command's exit status (0, 1 if a run decoded no
    training, validation or test clip at some point, 2 for bad data, checkpoints or settings, 130 on Ctrl-C)."""
    runtime.keep_freed_memory()
    failed = 0
    try:
        for cfg in configs:
            result = train(cfg)
            failed += "top1_video" not in result or bool(result.get("undecoded_val_epochs"))
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
