"""reports/ is generated from results/ only, reproducibly (benchmarks/reporting/render.py and its
sections)."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.data import motion
from benchmarks.reporting import wallclock
from benchmarks.reporting.render import render
from benchmarks.reporting.rows import Measured
from benchmarks.runner import plan
from benchmarks.store import SCHEMA_VERSION, Measurement, ResultsStore, RunConditions, StoreError, load_results
from models import ledger
from tests.paths import REPO


@pytest.mark.slow  # the report command end to end over a whole store
def test_committed_report_is_what_the_committed_results_generate(tmp_path, monkeypatch):
    if not (REPO / "results" / "measurements.csv").exists():
        pytest.skip("no committed results")
    monkeypatch.chdir(REPO)  # as `python benchmarks/report.py` runs it, from the repository
    render(Path("results"), tmp_path)
    assert (tmp_path / "README.md").read_text() == (REPO / "reports" / "README.md").read_text()


@pytest.fixture
def small_store(tmp_path):
    store = ResultsStore(tmp_path / "results")
    run = RunConditions("run-a", "cpu", "Test CPU", "fp32", "ncdhw", False)
    rows = [Measurement("mfnet", "cost", "params", 7_996_368, "count", clip="16x224x224"),
            Measurement("mfnet", "cost", "gmacs", 11.045, "GMAC", clip="16x224x224"),
            Measurement("i3d", "cost", "params", 12_697_000, "count", clip="64x224x224"),
            Measurement("i3d", "cost", "gmacs", 118.3, "GMAC", clip="64x224x224"),
            Measurement("mfnet", "speed", "latency_ms", 300.0, "ms", "infer", 1, "16x224x224"),
            Measurement("_machine", "speed", "peak_gmacs_per_s", 90.0, "GMAC/s")]
    store.append(rows, run, "2026-01-01T00:00:00+00:00")
    # an older-looking machine's timing must not leak into this machine's table
    other = RunConditions("run-b", "cpu", "Other CPU", "fp32", "ncdhw", False)
    store.append([Measurement("i3d", "speed", "latency_ms", 1.0, "ms", "infer", 1, "64x224x224")],
                 other, "2025-01-01T00:00:00+00:00")
    gpu = RunConditions("run-c", "cuda", "Test GPU", "fp32", "ncdhw", False)
    store.append([Measurement("mfnet", "speed", "latency_ms", 9.5, "ms", "infer", 1, "16x224x224"),
                  Measurement("mfnet", "memory", "peak_alloc_mb_train", 1234.0, "MB", "train", 4,
                              "16x224x224"),
                  Measurement("mfnet", "memory", "peak_alloc_mb_infer", 321.0, "MB", "infer", 4,
                              "16x224x224")], gpu, "2026-01-02T00:00:00+00:00")
    return store.root


def test_verdicts_and_reasons(small_store, tmp_path):
    render(small_store, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    mfnet_row = next(line for line in text.splitlines() if line.startswith("| MF-Net | 16×224×224"))
    paper = ledger.published("mfnet")
    assert (f"| {paper.params_m.value:g} | 8.00 | -0.0% | {paper.gmacs.value:g} | 11.04 | -0.5% |"
            in mfnet_row and "reproduced" in mfnet_row)
    i3d_row = next(line for line in text.splitlines() if line.startswith("| I3D | 64×224×224"))
    assert "**differs**" in i3d_row and "+9.6%" in i3d_row
    assert "S3D paper" in text  # the spec's documented reason is shown
    assert "not applicable" in text and "not measured" in text
    # one section per device, the most completely measured first (the GPU: latency and memory)
    headers = [line for line in text.splitlines() if line.startswith("## Efficiency on")]
    assert headers == ["## Efficiency on Test GPU (cuda, fp32)", "## Efficiency on Test CPU (cpu, fp32)",
                       "## Efficiency on Other CPU (cpu, fp32)"]
    assert "Timed on 3 device(s), each in a section of its own, the most completely measured first (Test GPU)" in text
    cpu = text.split("## Efficiency on Test CPU (cpu, fp32)")[1].split("\n## ")[0]
    # its own timing, with the counted costs from any machine; I3D, timed elsewhere, named with its command
    assert "| MF-Net | 16x224x224 | NCDHW | 11.04 | 8.00 | – | 300.0 |" in cpu and "| I3D |" not in cpu
    assert "Not measured on this device: I3D" in cpu and "`python benchmarks/run.py --models i3d" in cpu
    gpu = text.split("## Efficiency on Test GPU (cuda, fp32)")[1]
    assert "| MF-Net | 16x224x224 | NCDHW | 11.04 | 8.00 | – | 9.50 |" in gpu and "| 1,234 |" in gpu
    assert "--device cuda --models i3d" in gpu.split("\n## ")[0]
    assert (tmp_path / "out" / "memory_test_gpu.png").exists()
    closing = text.strip().splitlines()[-1]
    assert closing.startswith("Not in this report yet: accuracy on ImageNet, Kinetics, UCF-101")
    assert "GPU" not in closing


def test_output_is_byte_identical_for_the_same_results(small_store, tmp_path):
    render(small_store, tmp_path / "a")
    render(small_store, tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_wallclock_section_compares_mfnet_and_res3d_from_the_same_run(tmp_path):
    store = ResultsStore(tmp_path / "results")

    def rates(run_id, mfnet, res3d, timestamp, channels_last=False):
        run = RunConditions(run_id, "cpu", "Test CPU", "fp32", "channels_last" if channels_last else "ncdhw", False)
        rows = []
        for name, clip, (b1, b4, train) in (("mfnet", "16x224x224", mfnet), ("res3d", "8x112x112", res3d)):
            rows += [Measurement(name, "speed", "gmacs_per_s", b1, "GMAC/s", "infer", 1, clip),
                     Measurement(name, "speed", "gmacs_per_s", b4, "GMAC/s", "infer", 4, clip),
                     Measurement(name, "speed", "gmacs_per_s", train, "GMAC/s", "train", 4, clip)]
        store.append(rows, run, timestamp)

    rates("run-old", (10, 10, 10), (100, 100, 100), "2026-01-01T00:00:00+00:00")
    rates("run-new", (90, 50, 40), (100, 200, 200), "2026-01-02T00:00:00+00:00")
    rates("run-cl", (95, 60, 45), (100, 250, 210), "2026-01-03T00:00:00+00:00", channels_last=True)
    render(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    section = text.split("## Does MF-Net's wall-clock follow its FLOPs?")[1].split("\n## ")[0]
    stock = ", stock |"
    plain = next(line for line in section.splitlines() if line.startswith(f"| Test CPU, fp32{stock}"))
    assert "90 / 100 = **0.90×** ✓" in plain and "50 / 200 = **0.25×** ✗ (b=4)" in plain
    assert "40 / 200 = **0.20×** ✗ (b=4)" in plain and "run-new" in plain
    assert "run-old" not in section  # the newest run that has both models
    assert f"| Test CPU, fp32, channels-last{stock} 95 / 100 = **0.95×** ✓" in section
    assert "*stock*: PyTorch's own kernels, as footnote 5 found them." in section  # the labels' legend
    assert "The paper's forecast" not in section  # MF-Net was never timed on the suite's kernel


def test_footnote_5_forecast_is_judged_from_mfnet_on_stock_and_on_the_suite_kernel(tmp_path):
    store = ResultsStore(tmp_path / "results")

    def rates(run_id, kernels, mfnet, timestamp, note=""):
        run = RunConditions(run_id, "cpu", "Test CPU", "fp32", "channels_last", False, 2, kernels)
        rows = []
        for name, clip, (b1, b4, train) in (("mfnet", "16x224x224", mfnet),
                                            ("res3d", "8x112x112", (100, 200, 200))):
            rows += [Measurement(name, "speed", "gmacs_per_s", b1, "GMAC/s", "infer", 1, clip, note=note),
                     Measurement(name, "speed", "gmacs_per_s", b4, "GMAC/s", "infer", 4, clip),
                     Measurement(name, "speed", "gmacs_per_s", train, "GMAC/s", "train", 4, clip)]
        store.append(rows, run, timestamp)

    def section():
        render(store.root, tmp_path / "out")
        text = (tmp_path / "out" / "README.md").read_text()
        return text.split("## Does MF-Net's wall-clock follow its FLOPs?")[1].split("\n## ")[0]

    rates("run-stock", "stock", (80, 50, 40), "2026-01-01T00:00:00+00:00")
    rates("run-suite", "suite", (80, 100, 50), "2026-01-02T00:00:00+00:00")
    text = section()
    assert "| Test CPU, fp32, channels-last, suite kernels |" in text
    forecast = next(line for line in text.splitlines() if "run-stock vs run-suite" in line)
    assert "80 → 80 = **1.00×** ✓" in forecast and "50 → 100 = **2.00×** ✓ (b=4)" in forecast
    assert "40 → 50 = **1.25×** ✗ (b=4)" in forecast and "| does not hold here |" in forecast
    assert "stock over" not in forecast  # one stock run: no spread to show
    rates("run-stock0", "stock", (60, 50, 40), "2025-12-31T00:00:00+00:00")  # an older stock run
    rates("run-suite2", "suite", (90, 100, 80), "2026-01-03T00:00:00+00:00")
    forecast = next(line for line in section().splitlines() if "run-stock vs run-suite2" in line)
    assert "| holds |" in forecast and "80 → 90 = **1.12×** ✓; stock over 2 runs: 60–80" in forecast
    rates("run-suite3", "suite", (90, 100, 80), "2026-01-04T00:00:00+00:00",
          note="disturbed: another process took the CPU")
    forecast = next(line for line in section().splitlines() if "run-stock vs run-suite3" in line)
    assert "⚠" in forecast and "not judged" in forecast


def test_footnote_5_forecast_prefers_a_paired_run_to_newer_separate_ones(tmp_path):
    store = ResultsStore(tmp_path / "results")

    def rates(run_id, mfnet, timestamp, kernels=("stock", "suite"), res3d=()):
        rows = []
        for name, clip, values in (("mfnet", "16x224x224", mfnet), ("res3d", "8x112x112", res3d)):
            for kind, (b1, b4, train) in zip(kernels, values):
                rows += [Measurement(name, "speed", "gmacs_per_s", b1, "GMAC/s", "infer", 1, clip,
                                     kernels=kind),
                         Measurement(name, "speed", "gmacs_per_s", b4, "GMAC/s", "infer", 4, clip,
                                     kernels=kind),
                         Measurement(name, "speed", "gmacs_per_s", train, "GMAC/s", "train", 4, clip,
                                     kernels=kind)]
        store.append(rows, RunConditions(run_id, "cpu", "Test CPU", "fp32", "channels_last", False, 2, "suite"),
                     timestamp)

    rates("run-paired", ((40, 40, 20), (44, 64, 32)), "2026-01-01T00:00:00+00:00",
          res3d=((100, 200, 100), (110, 190, 100)))
    rates("run-stock", ((60, 40, 20),), "2026-01-02T00:00:00+00:00", kernels=("stock",))
    rates("run-suite", ((30, 40, 20),), "2026-01-03T00:00:00+00:00", kernels=("suite",))
    frame = load_results(store.root)
    assert set(frame[frame["run_id"] == "run-paired"]["kernels"]) == {"stock", "suite"}
    lines = wallclock.forecast_lines(frame[frame["metric"] == "gmacs_per_s"])
    forecast = next(line for line in lines if line.startswith("| Test CPU"))
    assert "run-paired (paired)" in forecast and "run-stock vs" not in forecast
    assert "40 → 44 = **1.10×** ✓" in forecast and "40 → 64 = **1.60×** ✓ (b=4)" in forecast
    assert "| holds |" in forecast
    # Res3D has no grouped convs: its two conditions in the paired run are the machine's noise
    control = next(line for line in lines if line.startswith("Control"))
    assert "run run-paired" in control
    assert "inference b=1 1.10×, inference b=4 0.95×, training b=4 1.00×" in control

    # a newer paired run whose control moved 25%: passed over, said so; the verdict stays
    rates("run-noisy", ((40, 40, 20), (80, 80, 40)), "2026-01-04T00:00:00+00:00",
          res3d=((100, 200, 100), (100, 250, 100)))
    lines = wallclock.forecast_lines(load_results(store.root).query("metric == 'gmacs_per_s'"))
    forecast = next(line for line in lines if line.startswith("| Test CPU"))
    assert "run-paired (paired)" in forecast and "| holds |" in forecast
    passed = next(line for line in lines if line.startswith("Passed over"))
    assert "run-noisy (control moved 25%)" in passed


def test_footnote_5_forecast_is_not_judged_from_a_paired_run_whose_control_moved(tmp_path):
    store = ResultsStore(tmp_path / "results")
    rows = []
    for name, clip, values in (("mfnet", "16x224x224", ((40, 40, 20), (80, 80, 40))),
                               ("res3d", "8x112x112", ((100, 200, 100), (100, 250, 100)))):
        for kind, (b1, b4, train) in zip(("stock", "suite"), values):
            rows += [Measurement(name, "speed", "gmacs_per_s", v, "GMAC/s", phase, batch, clip,
                                 kernels=kind)
                     for v, phase, batch in ((b1, "infer", 1), (b4, "infer", 4), (train, "train", 4))]
    store.append(rows, RunConditions("run-noisy", "cpu", "Test CPU", "fp32", "channels_last", False, 2, "suite"),
                 "2026-01-01T00:00:00+00:00")
    lines = wallclock.forecast_lines(load_results(store.root).query("metric == 'gmacs_per_s'"))
    forecast = next(line for line in lines if line.startswith("| Test CPU"))
    assert "40 → 80 = **2.00×** ⚠ (b=4)" in forecast and "✓" not in forecast
    assert "| not judged: the run's control moved 25% | run-noisy (paired) |" in forecast
    assert not any(line.startswith("Passed over") for line in lines)  # nothing steadier to use


def test_the_tables_show_a_paired_run_s_suite_rows_as_mfnet_s_default_path(tmp_path):
    """Where a run timed MF-Net on both kernels, the tables take the suite's row (its default);
    a newer run on stock kernels alone is newer, so it is the one shown."""
    store = ResultsStore(tmp_path / "results")
    run = RunConditions("run-paired", "cpu", "Test CPU", "fp32", "ncdhw", False, 2, "suite")
    store.append([Measurement("mfnet", "speed", "latency_ms", 80.0, "ms", "infer", 1, "16x224x224"),
                  Measurement("mfnet", "speed", "latency_ms", 100.0, "ms", "infer", 1, "16x224x224",
                              kernels="stock")], run, "2026-01-01T00:00:00+00:00")
    assert Measured(load_results(store.root), "cpu", "Test CPU").get("mfnet", "latency_ms", 1) == 80
    run = RunConditions("run-stock", "cpu", "Test CPU", "fp32", "ncdhw", False, 2, "stock")
    store.append([Measurement("mfnet", "speed", "latency_ms", 120.0, "ms", "infer", 1, "16x224x224")],
                 run, "2026-01-02T00:00:00+00:00")
    assert Measured(load_results(store.root), "cpu", "Test CPU").get("mfnet", "latency_ms", 1) == 120


def test_motion_accuracy_is_reported_per_protocol_and_clip_for_the_current_generator(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for run_id, protocol, top1, stamp, clip, dataset in (
            ("run-t", "protocol: equal time, 60 s", 70.0, "01", "16x32x32", motion.LABEL),
            ("run-e", "protocol: equal epochs, 6", 90.0, "02", "16x32x32", motion.LABEL),
            ("run-c", "protocol: equal time, 60 s", 60.0, "03", "16x48x48", motion.LABEL),
            ("run-v1", "protocol: equal time, 60 s", 11.0, "04", "16x32x32", "motion")):
        run = RunConditions(run_id, "cpu", "Test CPU", "fp32", "ncdhw", False)
        store.append([Measurement("mfnet", "accuracy", "top1_video", top1, "%", "test", clip=clip,
                                  dataset=dataset, views="1x1", note=protocol,
                                  protocol=protocol.removeprefix("protocol: ")),
                      Measurement("mfnet", "accuracy", "val_top1", top1, "%", "val", clip=clip,
                                  dataset=dataset, epoch=0, views="1x1"),
                      Measurement("mfnet", "speed", "latency_ms", 1.0, "ms", "infer", 1, "16x224x224")],
                     run, f"2026-01-{stamp}T00:00:00+00:00")
    render(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()

    def section(title):
        return text.split(f"## Motion benchmark ({motion.LABEL}): accuracy at {title}\n")[1].split("\n## ")[0]

    time_part = section("equal time, 60 s, 16x32x32")
    assert "| 70.00 | 1x1 |" in time_part and "90.00" not in time_part
    assert "11.00" not in text  # a row of an older generator (dataset "motion") is never shown
    assert "| 90.00 | 1x1 |" in section("equal epochs, 6, 16x32x32")
    assert "| 60.00 | 1x1 |" in section("equal time, 60 s, 16x48x48")
    assert (tmp_path / "out" / "motion_curves.png").exists()
    assert (tmp_path / "out" / "motion_curves_1.png").exists()


def test_two_stores_from_two_machines_make_one_report_with_a_section_each(tmp_path):
    for folder, machine, latency, stamp in (("a", "CPU A", 200.0, "01"), ("b", "CPU B", 50.0, "02")):
        store = ResultsStore(tmp_path / folder)
        run = RunConditions(f"run-{folder}", "cpu", machine, "fp32", "ncdhw", False, 2)
        store.append([Measurement("mfnet", "cost", "gmacs", 11.045, "GMAC", clip="16x224x224"),
                      Measurement("mfnet", "cost", "params", 7_996_368, "count", clip="16x224x224"),
                      Measurement("mfnet", "speed", "latency_ms", latency, "ms", "infer", 1, "16x224x224"),
                      Measurement("mfnet", "speed", "infer_clips_per_s", 1000 / latency, "clips/s",
                                  "infer", 4, "16x224x224")], run, f"2026-01-{stamp}T00:00:00+00:00")
    assert report.main(["--results", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "README.md").read_text()
    # equally complete: the newest device first
    assert text.index("## Efficiency on CPU B (cpu, fp32)") < text.index("## Efficiency on CPU A (cpu, fp32)")
    compared = text.split("## Devices compared")[1]
    assert "| MF-Net | 50.00 / 20.00 | 200.0 / 5.00 |" in compared  # in the sections' order
    assert (tmp_path / "out" / "devices.png").exists()
    first = (tmp_path / "out" / "README.md").read_bytes()
    report.main(["--results", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "README.md").read_bytes() == first  # byte-identical on a second run


def test_the_report_marks_disturbed_timings_and_refuses_their_verdict(tmp_path):
    disturbed = "disturbed: other processes used 0.90 of 2 CPUs over 2 s, with 2 threads of ours"
    rows = [Measurement(name, "speed", "latency_ms", ms, "ms", "infer", 1, plan.clip_label(name, None),
                        note=disturbed) for name, ms in (("mfnet", 100.0), ("r2plus1d", 900.0))]
    rows += [Measurement(name, "cost", "gmacs", g, "GMAC", clip=plan.clip_label(name, None))
             for name, g in (("mfnet", 11.1), ("r2plus1d", 152.0))]
    ResultsStore(tmp_path).append(rows, RunConditions("r", "cpu", "x", "fp32", "ncdhw", False, 2),
                                  "2026-01-01T00:00:00+00:00")
    render(tmp_path, tmp_path / "report")
    text = (tmp_path / "report" / "README.md").read_text()
    claim = next(line for line in text.splitlines() if "| wall-clock |" in line)
    assert "not judged: timed while the machine was shared" in claim and "⚠" in claim
    assert "100.0 ⚠" in text and "Timed while the machine was shared" in text


def _timed(store, device_name, stamp, rows):
    store.append(rows, RunConditions(f"run-{stamp}", "cpu", device_name, "fp32", "ncdhw", False, 2),
                 f"2026-02-{stamp}T00:00:00+00:00")


def _latency(name, ms):
    return Measurement(name, "speed", "latency_ms", ms, "ms", "infer", 1, plan.clip_label(name, None))


def test_a_timed_claim_comes_from_the_newest_device_that_times_both_models_and_names_it(tmp_path):
    store = ResultsStore(tmp_path / "r")
    _timed(store, "Old CPU (AVX2)", "01", [_latency("mfnet", 100.0), _latency("r2plus1d", 1500.0)])
    _timed(store, "New CPU (AVX512)", "02", [_latency("mfnet", 50.0), _latency("r2plus1d", 500.0)])
    _timed(store, "Newest CPU (AVX512)", "03", [_latency("mfnet", 10.0)])  # no R(2+1)D here
    render(store.root, tmp_path / "out")
    claim = next(line for line in (tmp_path / "out" / "README.md").read_text().splitlines()
                 if "| wall-clock |" in line)
    assert "| 10.00× lower latency at batch 1 | New CPU (AVX512) | does not hold (≥ 13×) |" in claim


def test_a_cpu_whose_instruction_set_was_not_recorded_is_named_so_beside_those_that_were(tmp_path):
    store = ResultsStore(tmp_path / "r")
    peak = Measurement("_machine", "speed", "peak_gmacs_per_s_conv", 270.0, "GMAC/s", "start")
    _timed(store, "AMD EPYC", "01", [_latency("mfnet", 100.0), peak])
    _timed(store, "AMD EPYC (AVX2)", "02", [_latency("mfnet", 300.0),
                                            Measurement("_machine", "speed", "peak_gmacs_per_s_conv", 100.0,
                                                        "GMAC/s", "start")])
    render(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "## Efficiency on AMD EPYC (instruction set not recorded) (cpu, fp32)" in text
    assert "its dense-conv peak reached 270.0 GMAC/s, against the same CPU name's AVX2 runs up to 100.0" in text
    assert "## Efficiency on AMD EPYC (AVX2) (cpu, fp32)" in text


def test_the_motion_benchmark_states_whether_every_3d_model_beats_the_frame_based_one(tmp_path):
    from benchmarks.reporting.motion import headline

    text = headline({"mfnet": 66.7, "res3d": 20.8, "mfnet2d_frames": 11.7}, {})
    assert text.startswith("**Every 3D model beats the frame-based 2D one: holds**") and "At chance" not in text
    text = headline({"mfnet": 66.7, "r2plus1d": 15.8, "mfnet2d_frames": 11.7}, {"r2plus1d": 0.25})
    assert "holds for the 1 of 2 3D models that learnt in the budget" in text
    assert "At chance: R(2+1)D-34 (0.250 epochs in the budget)" in text
    assert "does not hold" in headline({"mfnet": 10.0, "mfnet2d_frames": 11.7}, {})
    assert headline({"mfnet": 66.7}, {}) == ""  # nothing to set it against


def test_figures_a_report_no_longer_shows_are_removed_and_others_left_alone(tmp_path, small_store):
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("efficiency_motion_3.png", "efficiency_motion_3.svg", "memory_old_gpu.png"):
        (out / stale).write_bytes(b"an older report's")
    (out / "mine.png").write_bytes(b"a user's own file")
    render(small_store, out)
    names = {p.name for p in out.iterdir()}
    assert not names & {"efficiency_motion_3.png", "efficiency_motion_3.svg", "memory_old_gpu.png"}
    assert {"mine.png", "speed_vs_cost.png", "README.md"} <= names


def _two_runs(root: Path) -> ResultsStore:
    """Two runs on one CPU, each with its sidecar."""
    store = ResultsStore(root)
    (root / "runs").mkdir(parents=True)
    for stamp, ms in (("01", 100.0), ("02", 90.0)):
        run = RunConditions(f"run-{stamp}", "cpu", "CPU X", "fp32", "ncdhw", False, 2)
        store.write_environment(run.run_id, {"cpu": "CPU X", "threads": 2, "cpu_cores_allowed": 2})
        store.append([_latency("mfnet", ms)], run, f"2026-02-{stamp}T00:00:00+00:00")
    return store


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_a_newest_run_without_a_readable_sidecar_is_reported_from_its_rows(tmp_path, damage):
    store = _two_runs(tmp_path / "r")
    sidecar = store.root / "runs" / "run-02.json"
    sidecar.unlink() if damage == "missing" else sidecar.write_text('{"threads": ')
    render(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "recorded it: CPU X; instruction sets not recorded; 2 cores; 2 threads (2 runs, the newest run-02)" in text
    assert "nan" not in text.lower().replace("nanogpt", "")


def test_an_ok_row_without_a_value_is_shown_as_missing_and_draws_nothing(tmp_path):
    store = ResultsStore(tmp_path / "r")
    run = RunConditions("run-01", "cpu", "CPU X", "fp32", "ncdhw", False, 2)
    store.append([Measurement("mfnet", "cost", "gmacs", None, "GMAC", clip="16x224x224"),
                  Measurement("mfnet", "cost", "params", 8e6, "count", clip="16x224x224"),
                  _latency("mfnet", None), _latency("res3d", 240.0)], run, "2026-02-01T00:00:00+00:00")
    render(store.root, tmp_path / "out")
    text = (tmp_path / "out" / "README.md").read_text()
    assert "nan" not in text.lower().replace("nanogpt", "")
    assert Measured(load_results(store.root), "cpu", "CPU X").get("mfnet", "latency_ms", 1) is None


@pytest.mark.slow  # the report command end to end over a whole store
def test_a_store_of_a_newer_schema_is_refused_by_the_report_alone_or_merged(tmp_path):
    newer = ResultsStore(tmp_path / "newer")
    newer.append([_latency("mfnet", 90.0)], RunConditions("run-n", "cpu", "CPU X", "fp32", "ncdhw", False, 2),
                 "2026-02-01T00:00:00+00:00")
    newer.csv.write_text(newer.csv.read_text().replace(f",{SCHEMA_VERSION}\n", f",{SCHEMA_VERSION + 1}\n"))
    older = _two_runs(tmp_path / "older")
    with pytest.raises(StoreError, match="newer version of the suite"):
        render(newer.root, tmp_path / "out")
    proc = subprocess.run([sys.executable, "benchmarks/report.py", "--results", str(older.root), str(newer.root),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "newer version of the suite" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_the_busy_machine_flag_counts_runs_not_rows():
    import pandas as pd

    from benchmarks.reporting.motion import budget_notes

    def budget(run_id, note):
        return {"run_id": run_id, "metric": "clip_budget", "note": note}

    acc = pd.DataFrame([budget("a", "busy: 0.9 CPUs of other load; probe scaled"), budget("a", "busy: again"),
                        budget("b", "quiet"), {"run_id": "c", "metric": "top1_video", "note": ""}])
    assert budget_notes(acc) == ["", "⚠ Flagged in 1 of the 3 runs: busy: again."]


def test_the_main_table_shows_each_model_on_its_best_layout_and_names_the_path(tmp_path):
    store = ResultsStore(tmp_path / "r")
    clip = plan.clip_label("x3d_m", None)

    def rate(value, channels_last=None):
        return Measurement("x3d_m", "speed", "infer_clips_per_s", value, "clips/s", "infer", 4, clip,
                           channels_last=channels_last)

    store.append([rate(2.3), Measurement("x3d_m", "cost", "gmacs", 6.97, "GMAC", clip=clip)],
                 RunConditions("run-1", "cpu", "CPU X", "fp32", "ncdhw", False, 2),
                 "2026-01-01T00:00:00+00:00")
    store.append([rate(4.2, channels_last=True)], RunConditions("run-2", "cpu", "CPU X", "fp32", "best", False, 2),
                 "2026-01-02T00:00:00+00:00")
    store.append([rate(2.4)], RunConditions("run-3", "cpu", "CPU X", "fp32", "ncdhw", False, 2),
                 "2026-01-03T00:00:00+00:00")  # a newer run asked for NCDHW: not the default path
    render(store.root, tmp_path / "out")
    line = next(row for row in (tmp_path / "out" / "README.md").read_text().splitlines()
                if row.startswith(f"| X3D-M | {clip} |"))
    assert "| CL (best) |" in line and "4.20" in line
