"""The paper's Tables 1-4 beside the measured costs and accuracies, the user's own models, and
measured accuracy against measured cost."""

from pathlib import Path

import models
from benchmarks.reporting import figures, paper_accuracy
from benchmarks.reporting.efficiency import efficiency_table
from benchmarks.reporting.format import compare, fmt, paper
from benchmarks.reporting.rows import Measured, spec_clip
from models import ledger

TABLES, ACCURACY_COLUMNS, PAPER_ONLY = ledger.TABLES, ledger.ACCURACY_COLUMNS, ledger.PAPER_ONLY

def cost_row(name: str, m: Measured, accuracy_columns) -> tuple[list[str], str | None]:
    spec, published = models.get_spec(name), ledger.published(name)
    params = m.get(name, "params")
    params_m = None if params is None else params / 1e6
    gmacs = m.get(name, "gmacs")
    tol = ledger.COST_TOLERANCE[spec.fidelity]
    dp, vp = compare(published.params_m, params_m, tol)
    dg, vg = compare(published.gmacs, gmacs, tol)
    verdicts = {v for v in (vp, vg) if v}
    verdict = ("not measured" if "not measured" in verdicts else "differs" if "differs" in verdicts
               else "reproduced" if verdicts else "no paper figure")
    reason = None
    if verdict == "differs":
        reason = published.discrepancy.reason if published.discrepancy else spec.design_note
        verdict = "**differs** ¹"
    if spec.fidelity == "approximate":
        verdict += " (approx.)"
    paper_acc = {(a.dataset, a.metric): a.value for a in published.accuracy}
    accs = ["–" if key not in paper_acc else f"{paper_acc[key]:g}" for key in accuracy_columns]
    cells = [models.display_name(name), "×".join(map(str, spec.input_shape[1:])),
             paper(published.params_m), fmt(params_m), dp, paper(published.gmacs), fmt(gmacs), dg,
             *accs, verdict]
    return cells, reason

def cost_tables(m: Measured, entries: list[paper_accuracy.Entry]) -> list[str]:
    lines = []
    for table, names in TABLES.items():
        accuracy_columns = ACCURACY_COLUMNS[table]
        acc_headers = [f"paper {d} {k} %" for d, k in accuracy_columns]
        header = ["model", "input", "paper params M", "measured params M", "Δ",
                  "paper GMACs", "measured GMACs", "Δ", *acc_headers, "verdict"]
        title = table if table == "Beyond the paper" else f"{table} of the paper"
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        notes = []
        for name in names:
            cells, reason = cost_row(name, m, accuracy_columns)
            if reason:
                notes.append(f"- {models.display_name(name)}: {reason}")
            lines.append("| " + " | ".join(cells) + " |")
        for label, params, gmacs, acc in PAPER_ONLY.get(table, []):
            accs = acc.split(" / ")[: len(accuracy_columns)]
            accs += [""] * (len(accuracy_columns) - len(accs))
            lines.append(f"| {label} | | {params} | | | {gmacs} | | | " + " | ".join(accs)
                         + " | not applicable (not in the suite) |")
        lines.append("")
        if notes:
            lines += ["¹ Why it differs (from the paper's ledger, `models/ledger.py`):", "", *notes, ""]
        if accuracy_columns:
            lines += [f"Accuracy in {title}: the paper's figure (or the cited source's) beside "
                      "the accuracy measured by this suite, where `results/` holds one.", "",
                      *paper_accuracy.accuracy_table(
                          names, list(dict.fromkeys(d for d, _ in accuracy_columns)), entries), ""]
    return lines

def user_section(m: Measured) -> list[str]:
    """Models registered from outside the repository: the same measurements, no paper figure."""
    names = [n for n in models.list_models("user") if m.get(n, "gmacs") is not None]
    if not names:
        return []
    header = ["model", "registry name", "input", "params M", "GMACs", "paper figure"]
    lines = ["## Your models", "",
             "Registered outside the repository (`--import` or an installed package's entry "
             "point), measured by the same harness; they appear in every chart below.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        params = m.get(name, "params")
        lines.append("| " + " | ".join([
            models.display_name(name), f"`{name}`", spec_clip(name).replace("x", "×"),
            fmt(None if params is None else params / 1e6), fmt(m.get(name, "gmacs")),
            "no paper figure"]) + " |")
    return lines + ["", "Efficiency, measured as for the paper's models:", "",
                    *efficiency_table(m, names), ""]

def measured_accuracy_figures(entries: list[paper_accuracy.Entry], m: Measured, out: Path) -> list[str]:
    """Measured top-1 against measured cost, one figure per dataset with measured rows (the
    paper's Fig. 4b and 6, from this suite's numbers)."""
    lines = []
    for dataset, title in paper_accuracy.DATASET_NAMES.items():
        points = paper_accuracy.bubble_points(entries, dataset, lambda n: m.get(n, "gmacs"),
                                              lambda n: m.get(n, "params"))
        if not points:
            continue
        name = f"accuracy_{dataset}"
        figures.measured_bubbles(points, "measured multiply-adds per clip at the paper's input "
                                 "(GMACs, log)", f"{title} top-1 % (measured here, mean over "
                                 "seeds and splits)", m.label, out / name, "tab:green")
        lines += [f"![{title}: measured accuracy against measured cost]({name}.png)", ""]
    if lines:
        lines = ["## Measured accuracy against measured cost", "",
                 "Each point is one measured entry of the tables above ([weights]: trained here, "
                 "fine-tuned from a file, or a file evaluated as is).", "", *lines]
    return lines
