"""How fast one loader worker feeds a model: ``run.py --measure data --dataset D --root R``.

Per worker (in the calling process, as one DataLoader worker runs), on the dataset's own files:

- training items: one random clip per video, decoded, cropped and resized, flipped, normalised
  (the baseline resized whole frames before cropping, as earlier versions did);
- test views: N clips x M crops per video. The suite decodes each clip once and cuts its M crops
  from it; the baseline decoded the clip again for every crop, as earlier versions did.

Each path is timed against the earlier decoder (PyTorchVideo's ``EncodedVideo``, float frames,
``datasets.decode_clip_pytorchvideo``) in alternating rounds on the same items, and the median
round of each is kept, so a machine that slows down mid-run slows both alike. Beside it, the
model's training clips/s on the run's device at the data's clip says which of the two bounds
an epoch.
"""

import statistics
import time

from benchmarks.data import datasets
from benchmarks.measure.timing import time_step
from benchmarks.measure.workload import Setup, Workload
from benchmarks.store import Measurement

ROUNDS = 3  # alternating suite/baseline rounds; the median round of each is kept
SUITE = "the suite's loader: PyAV to uint8 with frame threading, one RGB scaler per clip"
BASELINE = "baseline: the earlier loader, PyTorchVideo EncodedVideo with float frames"


def items_per_second(dataset, count: int) -> float:
    """Items produced per second, reading ``count`` items in order (cycling the dataset)."""
    started = time.perf_counter()
    for i in range(count):
        dataset[i % len(dataset)]
    return count / (time.perf_counter() - started)


def side_by_side(suite, baseline, count: int, views_per_item: tuple[int, int]) -> tuple[float, float]:
    """(suite, baseline) views/s: the median of ``ROUNDS`` alternating rounds each."""
    ours, theirs = [], []
    for _ in range(ROUNDS):
        ours.append(items_per_second(suite, count) * views_per_item[0])
        theirs.append(items_per_second(baseline, count) * views_per_item[1])
    return statistics.median(ours), statistics.median(theirs)


def measure_data(name: str, dataset: str, root: str, clip: tuple[int, int, int], *, split: int = 1,
                 test_clips: int = 2, test_crops: int = 3, items: int = 8, workers: int = 1,
                 setup: Setup | None = None, batch: int = 4, min_run_time: float = 1.0) -> list[Measurement]:
    """Loader clips/s per worker (suite and baseline) for training items and test views, their
    ratio, and ``name``'s training clips/s at ``clip`` on ``setup``'s device."""
    from models import get_spec

    spec = get_spec(name)
    frames, crop, _ = clip
    # the clips train.py would load: the same scales, intervals and normalisation
    config = datasets.clip_config(dataset, clip, spec.mean, spec.std)
    common = dict(split=split, config=config)
    train, _ = datasets.build(dataset, root, train=True, **common)
    test, _ = datasets.build(dataset, root, train=False, clips=test_clips, crops=test_crops, **common)
    train_base = datasets.VideoClipDataset(train.items, config, train=True, baseline=True)
    # the earlier test path: every crop of a clip decoded as an item of its own
    test_base = datasets.VideoClipDataset(test.items, config, train=False, clips=test_clips, crops=1,
                                          baseline=True)
    label = f"{frames}x{crop}x{crop}"
    rows = []
    for phase, suite, baseline, views in (("train", train, train_base, (1, 1)),
                                          ("test", test, test_base, (test_crops, 1))):
        ours, theirs = side_by_side(suite, baseline, items, views)
        unit_note = "training clips" if phase == "train" else f"test views ({test_clips}x{test_crops})"
        rows += [Measurement(name, "data", "loader_clips_per_s", ours, "clips/s", phase, clip=label,
                             dataset=dataset, note=f"{unit_note} per worker; {SUITE}"),
                 Measurement(name, "data", "loader_clips_per_s_baseline", theirs, "clips/s", phase,
                             clip=label, dataset=dataset, note=f"{unit_note} per worker; {BASELINE}"),
                 Measurement(name, "data", "loader_speedup", ours / theirs, "ratio", phase, clip=label,
                             dataset=dataset, note=f"suite over baseline, {ROUNDS} alternating rounds "
                                                   f"of {items} items, median each")]
    setup = setup or Setup()
    workload = Workload(name, setup, clip)
    step = workload.make_train_step()
    x, y = workload.inputs(batch)
    timing = time_step(lambda: step(x, y), workload.synchronize, min_run_time)
    model_rate = batch / timing.median
    loader_rate = rows[0].value * workers
    bound = "the loader" if loader_rate < model_rate else "the model"
    rows.append(Measurement(name, "data", "model_train_clips_per_s", model_rate, "clips/s", "train",
                            batch, label, dataset=dataset,
                            note=f"{setup.device}; with {workers} loader workers ({loader_rate:.1f} "
                                 f"clips/s) {bound} bounds an epoch"))
    return rows
