"""The paper's claims (``ledger.CLAIMS``), each reading measured and judged."""

import models
from benchmarks.reporting.devices import Device, newest_with
from benchmarks.reporting.format import fmt, ratio
from benchmarks.reporting.rows import Measured, spec_clip
from models import ledger


def claims(m: Measured, found: list[Device]) -> list[str]:
    """Each claim of ``ledger.CLAIMS``, each of its readings with a verdict of its own: a counted
    reading from any machine, a timed one from the device whose newest rows time both models
    (``found``: the devices with timings), named in the table."""
    name = models.display_name

    def verdict(value, threshold):
        return "not measured" if value is None else "holds" if value >= threshold else "does not hold"

    lines = ["| claim (paper) | reading | measured | device | verdict |", "|---|---|---|---|---|"]
    for key, claim in ledger.CLAIMS.items():
        quote = f"\"{claim.quote}\" ({claim.where})"
        if claim.threshold is None:
            lines += memory_claim(m, quote, claim)
            continue
        mine, other = claim.models
        readings = {"computation_i3d": [("computation", "gmacs")],
                    "computation_r2plus1d": [("computation", "gmacs")],
                    # printed beside the FLOP figures: computation first, measured wall-clock second
                    "faster_r2plus1d": [("computation", "gmacs"), ("wall-clock", "latency_ms")],
                    "parameters_r2plus1d": [("parameters", "params")]}[key]
        for reading, metric in readings:
            timed = newest_with(found, [mine, other], metric) if metric == "latency_ms" else None
            source = timed.measured if timed else m
            value = ratio(source.get(other, metric), source.get(mine, metric))
            device = timed.label if timed else "–" if metric == "latency_ms" else "any (counted)"
            if value is not None and (source.disturbed(mine, metric) or source.disturbed(other, metric)):
                lines.append(f"| {quote} | {reading} | {fmt(value)}× ⚠ | {device} | not judged: "
                             "timed while the machine was shared |")
                continue
            what = {"gmacs": f"× GMACs ({name(other)} at {spec_clip(other)}, {name(mine)} at "
                             f"{spec_clip(mine)})",
                    "latency_ms": "× lower latency at batch 1",
                    "params": "× fewer parameters"}[metric]
            lines.append(f"| {quote} | {reading} | {fmt(value)}{what} | {device} | "
                         f"{verdict(value, claim.threshold)} (≥ {claim.threshold:g}×) |")
    pairs = [("resnet18_mf", "resnet18"), ("mobilenetv2_140_mf", "mobilenetv2_140")]
    cells = []
    for mf, base in pairs:
        gp = ratio(m.get(mf, "params"), m.get(base, "params"))
        gg = ratio(m.get(mf, "gmacs"), m.get(base, "gmacs"))
        cells.append(f"{name(mf)} / {name(base)}: params ×{fmt(gp)}, GMACs ×{fmt(gg)}")
    lines.append(f"| \"MF embedding lowers params and FLOPs\" (Table 1) | computation | {'; '.join(cells)} "
                 "| any (counted) | by construction: the MF-embedded widths are unpublished and were "
                 "sized to the paper's costs (approximate), so this is not independent evidence |")
    return lines

def memory_claim(m: Measured, quote: str, claim) -> list[str]:
    """"The lowest memory": read in its scope (the models of the paragraph that says it) and
    against every paper video model; activations saved for backward, counted at each model's
    paper input (GPU peaks, where measured, are in their own section)."""
    lines = []
    scopes = (("among the models of its paragraph", list(claim.models)),
              ("among all the paper's video models", models.list_models("paper-video")))
    for reading, names in scopes:
        act = {n: m.get(n, "activation_mb") for n in names}
        measured = {k: v for k, v in act.items() if v is not None}
        if len(measured) < len(act):
            lines.append(f"| {quote} | {reading} | activation memory of {len(measured)} of "
                         f"{len(act)} models | any | not measured |")
            continue
        ranking = ", ".join(f"{models.display_name(k)} {v:.0f}"
                            for k, v in sorted(measured.items(), key=lambda kv: kv[1]))
        lowest = min(measured, key=measured.get)
        lines.append(f"| {quote} | {reading} | activation MB/clip at each paper input: {ranking} | "
                     f"any (counted) | {'holds' if lowest == 'mfnet' else 'does not hold'} |")
    return lines
