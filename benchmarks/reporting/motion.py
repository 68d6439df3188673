"""The built-in motion benchmark: accuracy at equal training time (or equal epochs), its training
curves and accuracy against cost, one table per protocol and clip."""

from pathlib import Path

import pandas as pd

import models
from benchmarks.data import motion
from benchmarks.reporting import figures
from benchmarks.reporting.devices import label_of
from benchmarks.reporting.format import fmt


def motion_section(rows: pd.DataFrame, out: Path) -> list[str]:
    """The built-in motion benchmark: one table, curves and bubble chart per protocol (equal
    training time, the default job's, or equal epochs) and clip, each from the device whose runs
    of it are the newest, named. ``rows``: every ok row, not only the newest per key, since each
    protocol keeps its own newest run."""
    acc = rows[(rows["measurement"] == "accuracy") & (rows["dataset"] == motion.LABEL)]
    if acc.empty:
        return ["## Motion benchmark", "", "Not measured yet: run `python benchmarks/run.py "
                "--measure accuracy`.", ""]
    finals = acc[acc["metric"] == "top1_video"].sort_values("timestamp")
    finals = finals.assign(setting=list(zip(finals["protocol"].replace("", "not recorded"), finals["clip"])))
    newest = finals.groupby("setting").tail(1)  # each setting's newest final row, and its device
    settings = sorted(newest["setting"], key=lambda p: ("equal time" not in p[0], p))
    lines = []
    for index, setting in enumerate(settings):
        where = newest[newest["setting"] == setting].iloc[-1]
        mine = finals[(finals["setting"] == setting) & (finals["device_name"] == where["device_name"])
                      & (finals["device"] == where["device"])]
        runs = set(mine["run_id"])
        label = f"{label_of(where['device'], where['device_name'], rows)} ({where['device']}), {len(runs)} runs"
        suffix = "" if index == 0 else f"_{index}"
        lines += motion_table(rows, acc[acc["run_id"].isin(runs)], setting, label, out, suffix)
    return lines


EQUAL_TIME_TEXT = {
    False: "Every model trains for the same wall-clock budget on this machine, so faster models "
           "see more clips; accuracy at equal compute time is itself an efficiency result.",
    True: "Every model trains for the clips it reaches in the same time on a quiet machine: its "
          "training rate is probed just before training, scaled for any load during the probe, "
          "and training then runs to that clip count, so a busy machine cannot cut it short. "
          "Faster models see more clips; accuracy at equal compute time is itself an efficiency "
          "result.",
}

def budget_notes(acc: pd.DataFrame) -> list[str]:
    """The machine-load flag of a clip-budget run, once per table, counting runs."""
    flagged = acc[(acc["metric"] == "clip_budget") & acc["note"].str.startswith("busy")]
    if flagged.empty:
        return []
    runs = flagged["run_id"].nunique()
    return ["", f"⚠ Flagged in {runs} of the {acc['run_id'].nunique()} runs: "
                f"{flagged['note'].iloc[-1].split(';')[0]}."]


def headline(top1: dict[str, float], epochs: dict[str, float]) -> str:
    """The benchmark's finding: does every 3D model beat every frame-based 2D one? A 3D model no
    better than chance (too few clips in its budget to learn) is no evidence either way, and is
    named."""
    frame_based = {n: v for n, v in top1.items() if models.get_spec(n).family == "frame"}
    clips = {n: v for n, v in top1.items() if n not in frame_based}
    if not frame_based or not clips:
        return ""
    best_2d = max(frame_based, key=frame_based.get)
    at_chance = [n for n, v in clips.items() if v <= motion.CHANCE]
    learnt = {n: v for n, v in clips.items() if n not in at_chance}
    beaten = all(v > frame_based[best_2d] for v in clips.values())
    verdict = ("does not hold" if not beaten else "holds" if not at_chance
               else f"holds for the {len(learnt)} of {len(clips)} 3D models that learnt in the budget")
    worst = min(learnt or clips, key=(learnt or clips).get)
    text = (f"**Every 3D model beats the frame-based 2D one: {verdict}** (the lowest 3D top-1 that learnt, "
            f"{models.display_name(worst)} {fmt(clips[worst])}%, against the best frame-based, "
            f"{models.display_name(best_2d)} {fmt(frame_based[best_2d])}%; chance {motion.CHANCE:.1f}%).")
    if at_chance:
        text += (" At chance: " + ", ".join(f"{models.display_name(n)} ({fmt(epochs.get(n))} epochs in the budget)"
                                           for n in at_chance) + ".")
    return text


def motion_table(rows: pd.DataFrame, acc: pd.DataFrame, setting: tuple[str, str], device: str,
                 out: Path, suffix: str) -> list[str]:
    header = ["model", "clip", "GMACs/clip", "params M", "train s", "epochs", "clips seen",
              "top-1 clip %", "top-1 video %", "views"]
    protocol, clip = setting
    equal_time = "equal time" in protocol
    title = f"{protocol}, {clip}"
    lines = [f"## Motion benchmark ({motion.LABEL}): accuracy at {title}", "",
             f"Measured on {device}: the device of this protocol's newest runs. "
             "Classes are defined by motion alone (`benchmarks/data/motion.py`): a frame-based 2D "
             f"model cannot beat chance ({motion.CHANCE:.1f}%), a clip-based 3D model can. "
             + (EQUAL_TIME_TEXT[protocol.startswith("equal time as clips")] if equal_time
                else "Every model trains for the same number of epochs."),
             *budget_notes(acc), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    curves, points, top1, epochs = {}, [], {}, {}
    for name in sorted(set(acc["model"])):
        mine = acc[acc["model"] == name]
        run = mine.sort_values("timestamp")["run_id"].iloc[-1]  # the newest training run
        mine = mine[mine["run_id"] == run]
        value = {r.metric: r.value for r in mine.itertuples() if pd.isna(r.epoch)}
        clip = mine["clip"].iloc[-1]
        cost = rows[(rows["model"] == name) & (rows["clip"] == clip) & (rows["measurement"] == "cost")]
        cost = {r.metric: r.value for r in cost.itertuples()}
        views = mine[mine["metric"] == "top1_video"]["views"]
        lines.append("| " + " | ".join([
            models.display_name(name), clip, fmt(cost.get("gmacs")),
            fmt(cost["params"] / 1e6) if "params" in cost else "–", fmt(value.get("train_seconds")),
            fmt(value.get("epochs_completed")), fmt(value.get("clips_seen")),
            fmt(value.get("top1_clip")), fmt(value.get("top1_video")),
            views.iloc[-1] if len(views) else "–"]) + " |")
        per_epoch = mine[mine["epoch"].notna()]
        train_top1 = per_epoch[per_epoch["metric"] == "train_top1"].set_index("epoch")["value"]
        val_top1 = per_epoch[per_epoch["metric"] == "val_top1"].set_index("epoch")["value"]
        curves[name] = [(int(e), float(train_top1.get(e, float("nan"))), float(v))
                        for e, v in val_top1.sort_index().items()]
        if "top1_video" in value:
            top1[name], epochs[name] = value["top1_video"], value.get("epochs_completed")
        if "gmacs" in cost and "top1_video" in value:
            points.append((cost["gmacs"], value["top1_video"], cost.get("params", 0) / 1e6, name))
    label = f"{device}; {title}"
    figures.training_curves(curves, label, out / f"motion_curves{suffix}")
    figures.bubble_motion(points, label, out / f"efficiency_motion{suffix}")
    finding = headline(top1, epochs)
    return lines + (["", finding] if finding else []) + [
        "", f"![motion benchmark: accuracy against cost](efficiency_motion{suffix}.png)",
        "", f"![motion benchmark: training curves](motion_curves{suffix}.png)", ""]
