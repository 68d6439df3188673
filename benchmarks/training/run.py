"""One training run from start to finish (``train``), and the commands' entry (``main``)."""

import sys
import time

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
from benchmarks.training.state import Session, epoch_rows, final_rows, run_folder, weights_of
from models.checkpoint import CheckpointError


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

def train_all(configs: list[Config]) -> int:
    """Every run of ``configs`` in turn; the command's exit status (0, 1 if a run's evaluation
    decoded no video, 2 for bad data, checkpoints or settings, 130 on Ctrl-C)."""
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
