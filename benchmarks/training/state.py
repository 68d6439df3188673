"""A run's state across resumes: where its weights came from, its settings, its checkpoint
(``last.pt``, checked before anything in it is used), and the rows it writes, each once."""

import datetime as dt
import fcntl
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import models
from benchmarks.machine import environment
from benchmarks.store import Measurement, ResultsStore, RunConditions, new_run_id
from benchmarks.training.config import RESUMABLE, SPLIT_DATASETS, Config, SettingsError, jsonable, protocol
from benchmarks.training.optim import lr_factor, make_optimizer, progress_of
from benchmarks.training.precision import Precision
from models import kernels
from models.checkpoint import FORMAT, CheckpointError, file_digest, refusal, whole_message

# a run id becomes a file name: nothing but the characters new_run_id uses
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")

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
    values = {k: v for k, v in jsonable(cfg).items() if k not in RESUMABLE}
    return values | {"weights": weights}

def run_folder(cfg: Config) -> Path:
    split = f"-split{cfg.split}" if cfg.dataset in SPLIT_DATASETS else ""
    return Path(cfg.out) / f"{cfg.model}-{cfg.dataset}{split}-s{cfg.seed}"

@contextmanager
def holding(folder: Path):
    """This process as the one training into ``folder`` while the block runs: two trainings with
    the same ``--out``, model, dataset and seed would overwrite each other's ``last.pt`` and
    store each other's rows, so the second is refused (``SettingsError``, one line)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise SettingsError(f"{folder} is being trained into by {holder}; wait for it to finish, "
                                "or use another --out") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_run_state(path: Path, device) -> dict:
    """A run's ``last.pt``, checked before anything in it is used; one-line errors."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle with globals, not a torch file
        raise CheckpointError(f"cannot resume from {path}: {refusal(exc)}") from None
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

class Session:
    """One run's state across resumes: the optimiser and schedule, the counters and clock, the
    rows written so far, and the results store (rank 0 only). Rows are checkpointed before
    they are stored, and stored only where the store does not hold them yet, so each row is
    written once whatever the kill point."""

    def __init__(self, cfg: Config, module: nn.Module, steps: int, precision: Precision,
                 weights: str, last: Path):
        self.cfg, self.module, self.precision, self.last = cfg, module, precision, last
        self.optimizer = make_optimizer(module, cfg)
        self.counters = {"clips_seen": 0, "train_seconds": 0.0, "skipped_train": 0, "epochs_done": 0.0,
                         "undecoded_val_epochs": 0}
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
            raise CheckpointError(f"cannot resume from {self.last}: {whole_message(exc)}") from None
        self.start_epoch, self.run_id = state["epoch"], state["run_id"]
        self.counters.update({k: state["counters"][k] for k in self.counters if k in state["counters"]})
        self.prior_seconds = float(self.counters["train_seconds"])
        self.rows, self.final = state["rows"], state.get("final")

    def open_store(self, device, world: int, dataset: str, clip: str, extra: dict) -> None:
        self.store = ResultsStore(self.cfg.results)
        self.conditions = RunConditions(self.run_id, device.type, environment.device_name(device.type),
                                        self.cfg.amp or "fp32",
                                        "channels_last" if self.cfg.channels_last else "ncdhw", self.cfg.compile,
                                        torch.get_num_threads(), kernels_of(self.cfg, device))
        self.dataset, self.clip = dataset, clip
        self.store.check_writable()
        self.store.write_environment(self.run_id, environment.collect(device.type) | extra
                                     | {"train_config": jsonable(self.cfg), "world_size": world})

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

def epoch_rows(cfg: Config, epoch: int, train: tuple[float, float, int, int], val: tuple[float, int, int],
               clips_per_s: float) -> list[dict]:
    """An epoch's rows from ``train`` (loss, top-1, clips seen, videos skipped) and ``val`` (top-1,
    clips seen, videos skipped). A phase in which no clip decoded gives error rows naming the
    count, never an ok 0."""
    (loss, top1, seen, skipped), (val_top1, val_seen, val_skipped) = train, val
    common = dict(model=cfg.model, measurement="accuracy", batch_size=cfg.batch_size, epoch=epoch)
    trained = [dict(metric="train_loss", value=loss, unit="nats", phase="train", **common),
               dict(metric="train_top1", value=top1, unit="%", phase="train", **common),
               dict(metric="epoch_clips_per_s", value=clips_per_s, unit="clips/s", phase="train",
                    note="training clips per second over the epoch, data loading included", **common)]
    if not seen:
        trained = [row | dict(value=None, status="error", note="",
                              error=f"no training clip could be decoded ({skipped} videos skipped)")
                   for row in trained]
    validated = dict(metric="val_top1", value=val_top1, unit="%", phase="val", views="1x1", **common)
    if not val_seen:
        validated |= dict(value=None, status="error",
                          error=f"no validation clip could be decoded ({val_skipped} videos skipped)")
    return [*trained[:2], validated, trained[2]]


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
