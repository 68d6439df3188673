"""Measured accuracy in the paper's tables: split means, seeds, provenance and verdicts."""

from benchmarks.reporting import paper_accuracy
from benchmarks.reporting.render import render
from benchmarks.store import Measurement, ResultsStore, RunConditions
from models import ledger

KINETICS_FILE = "file:MFNet3D_Kinetics-400_72.8.pth@0123456789ab"


def accuracy(dataset: str, metric: str, value: float, seed: int = 0, weights: str = "trained",
             views: str = "10x3") -> Measurement:
    return Measurement("mfnet", "accuracy", metric, value, "%", "test", dataset=dataset,
                       views=views, clip="16x224x224", weights=weights, seed=seed)


def store_with_accuracy(root):
    store = ResultsStore(root)
    run = RunConditions("run-a", "cpu", "Test CPU", "fp32", "ncdhw", False)
    store.append([Measurement("mfnet", "cost", "params", 7_996_368, "count", clip="16x224x224"),
                  Measurement("mfnet", "cost", "gmacs", 11.045, "GMAC", clip="16x224x224"),
                  accuracy("ucf101/1", "top1_video", 50.0)],  # superseded by a newer row below
                 run, "2026-01-01T00:00:00+00:00")
    rows = [accuracy(f"ucf101/{split}", "top1_video", value, seed)
            for seed, values in ((0, (94.0, 95.0, 96.0)), (1, (97.0, 97.0, 97.0)))
            for split, value in zip((1, 2, 3), values)]
    rows += [accuracy("hmdb51/1", "top1_video", 70.0),
             accuracy("kinetics400", "top1_video", 72.5, weights=KINETICS_FILE),
             accuracy("kinetics400", "top5_video", 90.0, weights=KINETICS_FILE),
             # the motion benchmark is no paper dataset
             accuracy("motion/v2", "top1_video", 80.0, views="1x1")]
    store.append(rows, run, "2026-01-02T00:00:00+00:00")
    return root


def test_entries_average_splits_then_seeds_and_keep_provenance_apart(tmp_path):
    frame = ResultsStore(store_with_accuracy(tmp_path / "r")).frame()
    entries = {(e.dataset, e.metric): e for e in paper_accuracy.measured_entries(frame)}
    ucf = entries[("ucf101", "top1")]
    assert ucf.mean == 96.0 and round(ucf.spread, 3) == 1.414 and ucf.seeds == 2
    assert ucf.splits == (1, 2, 3) and ucf.views == "10x3" and ucf.weights == "trained"
    assert entries[("hmdb51", "top1")].splits == (1,)
    kinetics = entries[("kinetics400", "top1")]
    assert kinetics.weights == "file" and kinetics.files == ("MFNet3D_Kinetics-400_72.8.pth@0123456789ab",)
    assert ("motion", "top1") not in entries and ("motion/v2", "top1") not in entries


def test_the_report_shows_measured_accuracy_deltas_and_verdicts(tmp_path):
    render(store_with_accuracy(tmp_path / "r"), tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    table4 = text.split("Accuracy in Table 4")[1].split("###")[0]
    ucf = next(line for line in table4.splitlines() if line.startswith("| MF-Net | UCF-101"))
    paper = {(a.dataset, a.metric): a.value for a in ledger.published("mfnet").accuracy}
    assert f"| {paper['ucf101', 'top1']:g} | 96.0 ± 1.4 | {96.0 - paper['ucf101', 'top1']:+.1f} |" in ucf
    assert "| 10×3 | 1, 2, 3 | 2 | trained here | reproduced |" in ucf
    hmdb = next(line for line in table4.splitlines() if line.startswith("| MF-Net | HMDB-51"))
    assert f"| {paper['hmdb51', 'top1']:g} | 70.0 | {70.0 - paper['hmdb51', 'top1']:+.1f} |" in hmdb
    assert "**differs** (split 1 only" in hmdb
    i3d = next(line for line in table4.splitlines() if line.startswith("| I3D | UCF-101"))
    assert "not measured: `python benchmarks/train.py --model i3d --dataset ucf101" in i3d
    table3 = text.split("Accuracy in Table 3")[1].split("###")[0]
    k400 = next(line for line in table3.splitlines() if line.startswith("| MF-Net | Kinetics-400"))
    top1, top5 = paper["kinetics400", "top1"], paper["kinetics400", "top5"]
    assert f"| {top1:g} | 72.5 | {72.5 - top1:+.1f} | {top5:g} | 90.0 | {90.0 - top5:+.1f} |" in k400
    assert "evaluated as is: `MFNet3D_Kinetics-400_72.8.pth@0123456789ab`" in k400 and "reproduced" in k400
    assert (tmp_path / "out" / "accuracy_ucf101.png").exists()
    assert "accuracy_kinetics400.png" in text


def test_seeds_widen_the_tolerance_by_their_spread():
    one = paper_accuracy.Entry("mfnet", "kinetics400", "top1", 71.5, None, 1, (), "1x1", "trained", ())
    spread = paper_accuracy.Entry("mfnet", "kinetics400", "top1", 71.5, 0.6, 3, (), "1x1", "trained", ())
    paper = ledger.published("mfnet").accuracy[0].value  # Kinetics top-1
    assert paper - 71.5 > paper_accuracy.TOLERANCE_POINTS  # so one seed differs
    assert paper_accuracy.verdict([(paper, one)]) == "**differs**"
    assert paper_accuracy.verdict([(paper, spread)]) == "reproduced"
