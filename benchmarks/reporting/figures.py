"""The report's figures, drawn with matplotlib (PNG and SVG, byte-stable for the same data)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

import models  # noqa: E402
from benchmarks.data import motion  # noqa: E402
from models import ledger  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "mfnet-suite", "font.size": 9, "figure.dpi": 110})
# label offsets tried in order (points): right-up, right-down, left-up, left-down, above, below
OFFSETS = ((6, 5), (6, -11), (-6, 5), (-6, -11), (0, 9), (0, -15), (10, 14), (-10, -20))
# the paper's video models, plus the suite's extra 3D baselines; frame models sit at 1 frame
FIGURE_MODELS = ("mfnet", "i3d", "s3d", "r2plus1d", "res3d", "c3d", "resnext3d",
                 "x3d_xs", "x3d_s", "x3d_m")


def figure_models() -> tuple[str, ...]:
    """The charted models: the suite's 3D models and every video model a user registered."""
    return FIGURE_MODELS + tuple(n for n in models.list_models("user") if models.get_spec(n).is_video)


def save(fig, path: Path) -> None:
    fig.savefig(path.with_suffix(".png"), metadata={"Software": None}, bbox_inches="tight")
    fig.savefig(path.with_suffix(".svg"), metadata={"Date": None, "Creator": None},
                bbox_inches="tight")
    plt.close(fig)


def label_points(ax, points: list[tuple[float, float, str]], radii=None) -> None:
    """Label each point at the first offset whose text box lies inside the axes and overlaps
    no earlier label and no point's marker;
    ``radii`` (points) are the markers' sizes and push labels clear of bubbles.
    Call it after the axes' scales and limits are set: boxes are compared on the screen."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    ax.autoscale_view()
    to_pixels = fig.dpi / 72
    markers = []
    for index, (x, y, _) in enumerate(points):
        cx, cy = ax.transData.transform((x, y))
        r = max(radii[index] if radii else 0, 4) * to_pixels
        markers.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    placed = []
    inside = ax.bbox.padded(-2)  # inside the axes: savefig(bbox_inches="tight") cut one off

    def fits(box, others):
        return (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                and box.y1 <= inside.y1 and not any(box.overlaps(o) for o in placed + others))

    for index, (x, y, text) in enumerate(points):
        pad = radii[index] if radii else 0
        others = [m for i, m in enumerate(markers) if i != index]
        for ox, oy in OFFSETS:
            dx, dy = ox + (pad if ox > 0 else -pad if ox < 0 else 0), oy + (pad if oy > 0 else -pad)
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                ha=ha, fontsize=8)
            box = label.get_window_extent(renderer).padded(3)
            if fits(box, others):
                placed.append(box)
                break
            label.remove()
        else:  # every offset collides: keep the first, it is still attached to its point
            label = ax.annotate(text, (x, y), xytext=OFFSETS[0], textcoords="offset points", fontsize=8)
            placed.append(label.get_window_extent(renderer))


def caption(ax, measured, extra: str = "") -> None:
    ax.set_title(f"{measured.label}{extra}", fontsize=7, loc="right")


def speed_vs_cost(measured, names, path: Path) -> None:
    """Throughput against multiply-adds, with lines of constant GMAC/s: how far wall-clock falls
    from what the FLOPs promise (the paper's footnote 5)."""
    points = [(measured.get(n, "gmacs"), measured.get(n, "latency_ms"), n) for n in figure_models()
              if n in names and measured.get(n, "latency_ms") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    if points:
        xs = [g for g, _, _ in points]
        ys = [1000 / ms for _, ms, _ in points]  # clips/s at batch 1
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
        peak = measured.get("_machine", "peak_gmacs_per_s")
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        for rate, style in ((peak, "-"), (peak / 4 if peak else None, "--"),
                            (peak / 16 if peak else None, ":")):
            if rate:
                ax.plot([lo, hi], [rate / lo, rate / hi], style, color="grey", lw=0.8)
                ax.annotate(f"{rate:.0f} GMAC/s" + (" (machine peak)" if rate == peak else ""),
                            (lo, rate / lo), xytext=(2, -9), textcoords="offset points", fontsize=7,
                            color="grey", ha="left", va="top", rotation=-18)
        label_points(ax, [(x, y, models.display_name(n)) for x, y, (_, _, n) in zip(xs, ys, points)])
    ax.set_xlabel("multiply-adds per clip at the paper's input (GMACs, log)")
    ax.set_ylabel("inference clips/s at batch 1 (log)")
    ax.grid(True, which="both", alpha=0.2)
    caption(ax, measured)
    save(fig, path)


def memory(measured, names, path: Path) -> None:
    """Activation memory per clip (device independent) at each model's paper input."""
    values = sorted((measured.get(n, "activation_mb"), n) for n in figure_models()
                     if n in names and measured.get(n, "activation_mb") is not None)
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * max(len(values), 1) + 1.2))
    labels = [f"{models.display_name(n)} ({'×'.join(map(str, models.get_spec(n).input_shape[1:]))})"
              for _, n in values]
    bars = ax.barh(labels, [v for v, _ in values], color="tab:orange")
    ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xlabel("activation memory saved for backward, MB per clip (training)")
    ax.margins(x=0.12)
    caption(ax, measured)
    save(fig, path)


def devices(rates: dict[tuple[str, str], float | None], names: list[str], devices: list[str],
            path: Path) -> None:
    """Inference clips/s, model by model, one bar per device (log scale: devices differ by
    orders of magnitude)."""
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * max(len(names), 1) * max(len(devices), 1) / 2 + 1.5))
    height = 0.8 / max(len(devices), 1)
    for i, device in enumerate(devices):
        values = [rates.get((n, device)) or float("nan") for n in names]  # nan: no bar
        ax.barh([y + i * height for y in range(len(names))], values, height, label=device)
    ax.set_yticks([y + height * (len(devices) - 1) / 2 for y in range(len(names))])
    ax.set_yticklabels([models.display_name(n) for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("inference clips/s at each device's throughput batch (log)")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(True, axis="x", which="both", alpha=0.2)
    save(fig, path)


def gpu_memory(measured, names, path: Path) -> None:
    """Peak allocated CUDA memory of an inference and a training step, per model."""
    rows = [(n, measured.get(n, "peak_alloc_mb_infer"), measured.get(n, "peak_alloc_mb_train"))
            for n in names]
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(rows), 1) + 1.2))
    ys = range(len(rows))
    phases = ((-0.2, 1, "inference", "tab:blue"), (0.2, 2, "training", "tab:red"))
    for offset, column, label, colour in phases:
        bars = ax.barh([y + offset for y in ys], [r[column] or 0 for r in rows], height=0.4,
                       label=label, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_yticks(list(ys), [models.display_name(r[0]) for r in rows])
    ax.set_xlabel("peak allocated GPU memory, MB (batch as in the table)")
    ax.legend(fontsize=8, frameon=False)
    ax.margins(x=0.12)
    caption(ax, measured)
    save(fig, path)


def bubble(measured, path: Path) -> None:
    """Fig. 4b's style: the paper's Kinetics top-1 against measured multiply-adds; circle area
    proportional to measured params. X3D's accuracy is the PyTorchVideo zoo's."""
    points = []
    for name in FIGURE_MODELS:
        accuracy = [a.value for a in ledger.published(name).accuracy
                    if a.dataset == "kinetics400" and a.metric == "top1"]
        gmacs, params = measured.get(name, "gmacs"), measured.get(name, "params")
        if accuracy and gmacs is not None and params is not None:
            points.append((gmacs, accuracy[0], params / 1e6, name))
    measured_bubbles(points, "measured multiply-adds per clip at the paper's input (GMACs, log)",
                     "Kinetics-400 top-1 % (paper / model zoo, not measured here)", measured.label,
                     path, "tab:green", ylim=None)


def training_curves(curves: dict[str, list[tuple[int, float, float]]], label: str, path: Path) -> None:
    """The motion benchmark's Fig. 4a: train (thin) and validation (thick) top-1 per epoch."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, points) in enumerate(sorted(curves.items())):
        colour = f"C{i}"
        epochs = [e + 1 for e, _, _ in points]
        ax.plot(epochs, [t for _, t, _ in points], color=colour, lw=0.8, alpha=0.7)
        ax.plot(epochs, [v for _, _, v in points], color=colour, lw=2.2, marker="o", ms=3,
                label=models.display_name(name))
    ax.axhline(motion.CHANCE, color="grey", ls=":", lw=0.8)
    ax.annotate(f"chance ({motion.MotionDataset.num_classes} classes)", (0.99, motion.CHANCE),
                xycoords=("axes fraction", "data"),
                fontsize=7, color="grey", va="top", ha="right", xytext=(0, -3),
                textcoords="offset points")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("top-1 % (thick: validation, thin: training)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylim(0, 100)
    ax.set_title(label, fontsize=7, loc="right")
    save(fig, path)


def bubble_motion(points: list[tuple[float, float, float, str]], label: str, path: Path) -> None:
    """Measured motion-benchmark accuracy against measured multiply-adds at the benchmark's clip;
    circle area proportional to params."""
    measured_bubbles(points, "multiply-adds per clip at the benchmark's clip (GMACs, log)",
                     "motion benchmark top-1 % (measured)", label, path, "tab:purple", chance=motion.CHANCE)


def measured_bubbles(points: list[tuple[float, float, float, str]], xlabel: str, ylabel: str,
                     label: str, path: Path, colour: str = "tab:blue",
                     chance: float | None = None, ylim: tuple[float, float] | None = (0, 105)) -> None:
    """Accuracy (y) against measured multiply-adds (x, log); circle area proportional to
    params: the paper's Fig. 4b and 6. ``ylim`` None: fit the points."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=[p[2] * 12 for p in points],
                   alpha=0.45, color=colour, edgecolor="k")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    if ylim is None:
        ax.margins(0.15)
    else:
        ax.set_ylim(*ylim)
        ax.margins(x=0.2)
    if points:
        label_points(ax, [(g, a, f"{models.display_name(n)} ({p:.1f} M)") for g, a, p, n in points],
                     [(p[2] * 12) ** 0.5 / 2 for p in points])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.2)
    ax.set_title(f"{label}; area ∝ params", fontsize=7, loc="right")
    save(fig, path)
