"""Data loading: does the loader or the model bound an epoch (``run.py --measure data``)?"""

import pandas as pd

import models
from benchmarks.reporting.format import fmt


def loader_section(rows: pd.DataFrame) -> list[str]:
    """The loader against the model (``run.py --measure data``): newest row per dataset, clip,
    model and decoder."""
    data = rows[rows["measurement"] == "data"]
    if data.empty:
        return []
    lines = ["## Data loading: does the loader or the model bound an epoch?", "",
             "One loader worker's clips/s on the dataset's own files, the suite's decoder and "
             "the earlier PyTorchVideo one timed side by side in alternating rounds; test views "
             "decode each clip once for all its crops (the baseline decoded it per crop). The "
             "last column is the model's training clips/s on the run's device.", "",
             "| dataset | clip | model | device | train items/s per worker (suite / baseline) | "
             "speed-up | test views/s per worker (suite / baseline) | speed-up | "
             "model train clips/s | what bounds an epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, clip, name, device), group in data.groupby(["dataset", "clip", "model", "device_name"]):
        def pick(metric, phase, group=group):
            hit = group[(group["metric"] == metric) & (group["phase"] == phase)]
            return None if hit.empty else float(hit["value"].iloc[-1])

        model_rows = group[group["metric"] == "model_train_clips_per_s"]
        bound = model_rows["note"].iloc[-1].split(") ")[-1] if not model_rows.empty else "–"
        cells = [dataset, clip, models.display_name(name), device]
        for phase in ("train", "test"):
            cells += [f"{fmt(pick('loader_clips_per_s', phase))} / "
                      f"{fmt(pick('loader_clips_per_s_baseline', phase))}",
                      f"{fmt(pick('loader_speedup', phase))}×"]
        cells += [fmt(pick("model_train_clips_per_s", "train")), bound]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
