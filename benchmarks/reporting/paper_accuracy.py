"""Measured accuracy beside the paper's, for the report's Tables 1, 3 and 4.

The paper reports UCF-101 and HMDB-51 as "the averaged three-fold cross validation accuracy"
(Sec. 4.2), Kinetics-400 on its validation set, ImageNet-1k as single 224 centre-crop top-1/top-5
(Table 1's caption). Here, from the results store's accuracy rows:

- each (model, dataset, views, where the weights came from) is one measured entry; weights
  trained here, fine-tuned from a file, or a file evaluated as is are never averaged together;
- within an entry, the newest row per split and seed counts; a seed's value is the mean over the
  splits it has; the entry is the mean over seeds, with their sample standard deviation as the
  spread;
- UCF-101 and HMDB-51 entries name the splits they hold: only all three make the paper's mean.

Verdict: **reproduced** when the measured mean is within ``TOLERANCE_POINTS`` of the paper's
figure, widened by the spread over seeds when several were run (fine-tuning varies by about a
point between seeds); **differs** otherwise; **not measured** with the command that measures it.
"""

import statistics
from dataclasses import dataclass

import pandas as pd

import models
from models import ledger

TOLERANCE_POINTS = 1.0  # top-1/top-5 points either side of the paper's figure
DATASET_NAMES = {"imagenet": "ImageNet-1k", "kinetics400": "Kinetics-400", "ucf101": "UCF-101",
                 "hmdb51": "HMDB-51"}
SPLIT_DATASETS = ("ucf101", "hmdb51")
METRICS = {"top1": "top1_video", "top5": "top5_video"}  # ImageNet: one view, so video = image


@dataclass(frozen=True)
class Entry:
    """One measured accuracy: the mean over seeds (each the mean over its splits)."""

    model: str
    dataset: str  # without split
    metric: str  # top1 | top5
    mean: float
    spread: float | None  # sample SD over seeds; None with one seed
    seeds: int
    splits: tuple[int, ...]
    views: str
    weights: str  # trained | finetuned | file
    files: tuple[str, ...]  # the files behind finetuned/file weights, "name@sha"


def weights_kind(weights: str) -> str:
    return weights.split(":", 1)[0] if weights else "trained"


def measured_entries(frame: pd.DataFrame) -> list[Entry]:
    """Every measured (model, dataset, metric, views, weights kind) from ``frame``'s ok rows."""
    rows = frame[(frame["status"] == "ok") & (frame["measurement"] == "accuracy")
                 & frame["metric"].isin(METRICS.values()) & frame["epoch"].isna()].copy()
    if rows.empty:
        return []
    rows["base"] = rows["dataset"].str.split("/").str[0]
    rows = rows[rows["base"].isin(DATASET_NAMES)]
    rows["split"] = [int(d.split("/")[1]) if "/" in d else 0 for d in rows["dataset"]]
    rows["kind"] = rows["weights"].map(weights_kind)
    rows["seed_"] = rows["seed"].fillna(0).astype(int)
    rows["_order"] = range(len(rows))
    rows = rows.sort_values(["timestamp", "_order"])
    entries = []
    for (model, base, metric, views, kind), group in rows.groupby(
            ["model", "base", "metric", "views", "kind"], sort=True):
        newest = group.drop_duplicates(["split", "seed_"], keep="last")
        per_seed = newest.groupby("seed_")["value"].mean()
        files = tuple(sorted({w.split(":", 1)[1] for w in newest["weights"] if ":" in w}))
        entries.append(Entry(
            model, base, next(k for k, v in METRICS.items() if v == metric),
            float(per_seed.mean()), float(statistics.stdev(per_seed)) if len(per_seed) > 1 else None,
            len(per_seed), tuple(sorted(s for s in set(newest["split"]) if s)), views, kind, files))
    return entries


def reproduces(paper: float, entry: Entry) -> bool:
    return abs(entry.mean - paper) <= TOLERANCE_POINTS + (entry.spread or 0.0)


def verdict(pairs: list[tuple[float, Entry]]) -> str:
    """One verdict over a row's (paper figure, measured entry) pairs: every one must hold."""
    if not pairs:
        return "no paper figure"
    word = "reproduced" if all(reproduces(p, e) for p, e in pairs) else "**differs**"
    entry = pairs[0][1]
    if entry.dataset in SPLIT_DATASETS and entry.splits != (1, 2, 3):
        word += (f" (split {', '.join(map(str, entry.splits))} only; the paper's is the "
                 "3-split mean)")
    return word


def command(model: str, dataset: str) -> str:
    """The one command that measures ``model`` on ``dataset`` as the paper did."""
    base = f"python benchmarks/train.py --model {model} --dataset {dataset} --root DATA"
    if dataset in SPLIT_DATASETS:
        return (f"`{base} --split all --preset finetune --checkpoint KINETICS.pth "
                "--test-clips 10 --test-crops 3`")
    if dataset == "kinetics400":
        return f"`{base} --preset kinetics --test-clips 10 --test-crops 3`"
    return f"`{base} --preset imagenet`"


WEIGHTS_TEXT = {"trained": "trained here", "finetuned": "fine-tuned here from",
                "file": "evaluated as is:"}


def weights_text(entry: Entry) -> str:
    text = WEIGHTS_TEXT[entry.weights]
    if entry.files:
        shown = ", ".join(f"`{f}`" for f in entry.files[:3])
        text += " " + shown + (f" and {len(entry.files) - 3} more" if len(entry.files) > 3 else "")
    return text


def value_text(entry: Entry | None) -> str:
    if entry is None:
        return "–"
    return f"{entry.mean:.1f}" + (f" ± {entry.spread:.1f}" if entry.spread is not None else "")


def accuracy_table(names: list[str], datasets: list[str], entries: list[Entry]) -> list[str]:
    """Markdown rows: per model and each of ``datasets`` the paper has a figure for, each
    measured entry (or "not measured" with the command)."""
    header = ["model", "dataset", "paper top-1 %", "measured top-1 %", "Δ points",
              "paper top-5 %", "measured top-5 %", "Δ points", "views (clips×crops)", "splits",
              "seeds", "weights", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        paper = {}
        for acc in ledger.published(name).accuracy:
            if acc.dataset in datasets:
                paper.setdefault(acc.dataset, {})[acc.metric] = acc.value
        for dataset, figures in paper.items():
            mine = [e for e in entries if e.model == name and e.dataset == dataset]
            keys = sorted({(e.views, e.weights) for e in mine})
            p1, p5 = figures.get("top1"), figures.get("top5")
            if not keys:
                lines.append("| " + " | ".join([
                    models.display_name(name), DATASET_NAMES[dataset], _fmt(p1), "–", "", _fmt(p5), "–",
                    "", "", "",
                    "", "", f"not measured: {command(name, dataset)}"]) + " |")
            for views, weights in keys:
                found = {e.metric: e for e in mine if (e.views, e.weights) == (views, weights)}
                top1, top5 = found.get("top1"), found.get("top5")
                word = verdict([(p, e) for p, e in ((p1, top1), (p5, top5))
                                if p is not None and e is not None])
                any_entry = top1 or top5
                lines.append("| " + " | ".join([
                    models.display_name(name), DATASET_NAMES[dataset], _fmt(p1), value_text(top1),
                    _delta(p1, top1),
                    _fmt(p5), value_text(top5), _delta(p5, top5), views.replace("x", "×"),
                    ", ".join(map(str, any_entry.splits)) or "–", str(any_entry.seeds),
                    weights_text(any_entry), word]) + " |")
    return lines


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _delta(paper: float | None, entry: Entry | None) -> str:
    return "" if paper is None or entry is None else f"{entry.mean - paper:+.1f}"


def bubble_points(entries: list[Entry], dataset: str, gmacs_of, params_of) -> list[tuple]:
    """(GMACs, top-1, params M, label) for the figure: measured top-1 against measured cost."""
    points = []
    for e in entries:
        if e.dataset == dataset and e.metric == "top1":
            gmacs, params = gmacs_of(e.model), params_of(e.model)
            if gmacs is not None and params is not None:
                points.append((gmacs, e.mean, params / 1e6, f"{models.display_name(e.model)} [{e.weights}]"))
    return sorted(points)
