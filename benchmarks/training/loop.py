"""The epoch loop and the multi-view evaluation, with a progress bar on rank 0."""

import contextlib
import time

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from benchmarks.training.distributed import all_sum
from benchmarks.training.precision import Precision


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
