"""The report's figures (benchmarks/reporting/figures.py): each writes a PNG and an SVG, the same
bytes for the same data, draws what it is given (nothing, NaN and one point included), and
places its labels inside the axes without overlapping one another."""

import matplotlib.pyplot as plt
import pytest

from benchmarks.reporting import figures


class Fake:
    """What a figure reads of ``rows.Measured``: values per (model, metric), and a caption."""

    label = "Test CPU (cpu), 1 run"

    def __init__(self, values: dict[tuple[str, str], float]):
        self.values = values

    def get(self, name: str, metric: str, batch=None):
        return self.values.get((name, metric))


MEASURED = Fake({("mfnet", "gmacs"): 11.0, ("mfnet", "latency_ms"): 110.0, ("mfnet", "params"): 8e6,
                 ("mfnet", "activation_mb"): 497.0, ("res3d", "gmacs"): 20.4, ("res3d", "latency_ms"): 240.0,
                 ("res3d", "params"): 33.4e6, ("res3d", "activation_mb"): 81.0, ("i3d", "gmacs"): 118.0,
                 ("i3d", "params"): 12.7e6, ("_machine", "peak_gmacs_per_s"): 240.0,
                 ("mfnet", "peak_alloc_mb_infer"): 300.0, ("mfnet", "peak_alloc_mb_train"): 1200.0})
DRAWINGS = {
    "speed_vs_cost": lambda m, path: figures.speed_vs_cost(m, ["mfnet", "res3d"], path),
    "memory": lambda m, path: figures.memory(m, ["mfnet", "res3d"], path),
    "gpu_memory": lambda m, path: figures.gpu_memory(m, ["mfnet"], path),
    "bubble": lambda m, path: figures.bubble(m, path),
    "devices": lambda m, path: figures.devices({("mfnet", "A"): 9.0, ("mfnet", "B"): float("nan")},
                                               ["mfnet"], ["A", "B"], path),
    "training_curves": lambda m, path: figures.training_curves({"mfnet": [(0, 20.0, 18.0), (1, 60.0, 55.0)]},
                                                               m.label, path),
    "bubble_motion": lambda m, path: figures.bubble_motion([(0.2, 66.0, 8.0, "mfnet")], m.label, path),
}


@pytest.mark.parametrize("name", DRAWINGS)
def test_each_figure_writes_png_and_svg_byte_identical_for_the_same_data(name, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        DRAWINGS[name](MEASURED, tmp_path / folder / name)
    for suffix in (".png", ".svg"):
        first, second = ((tmp_path / f / name).with_suffix(suffix).read_bytes() for f in ("a", "b"))
        assert first == second and len(first) > 1000
    assert b"<svg" in (tmp_path / "a" / name).with_suffix(".svg").read_bytes()
    assert not plt.get_fignums()  # every figure closed


@pytest.mark.parametrize("name", DRAWINGS)
def test_a_figure_with_nothing_measured_is_drawn_empty_not_a_crash(name, tmp_path):
    DRAWINGS[name](Fake({}), tmp_path / name)
    assert (tmp_path / f"{name}.png").exists()


def test_labels_stay_inside_the_axes_and_apart():
    """Neighbours whose first choice of place collides get another; a point at the edge gets a
    label that stays inside (savefig's tight box would cut one that did not)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    points = [(1.0, 1.0, "MF-Net"), (1.35, 1.15, "Res3D"), (9.0, 9.0, "far at the edge")]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    figures.label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(points)
    inside = ax.bbox
    assert all(b.x0 >= inside.x0 and b.x1 <= inside.x1 and b.y0 >= inside.y0 and b.y1 <= inside.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the first choice (right and up) would have covered its neighbour, and the edge's its border
    assert [t.xyann for t in ax.texts] != [figures.OFFSETS[0]] * len(points)
    plt.close(fig)
