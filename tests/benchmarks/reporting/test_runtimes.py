"""The report's runtime section (benchmarks/reporting/runtimes.py): each model's latency and
throughput per runtime and precision with its fastest marked, footnote 5's ratio per setup, and
nothing where only eager fp32 was timed."""

from benchmarks.reporting.rows import newest
from benchmarks.reporting.runtimes import runtime_section
from benchmarks.runner import plan
from benchmarks.store import Measurement, ResultsStore, RunConditions, load_results


def _speed(name, runtime, dtype, latency, rate, gmacs):
    clip = plan.clip_label(name, None)
    return ([Measurement(name, "speed", "latency_ms", latency, "ms", "infer", 1, clip),
             Measurement(name, "speed", "infer_clips_per_s", rate, "clips/s", "infer", 4, clip),
             Measurement(name, "speed", "gmacs_per_s", gmacs, "GMAC/s", "infer", 4, clip)], runtime, dtype)


def _store(tmp_path, setups):
    store = ResultsStore(tmp_path / "r")
    for i, (rows, runtime, dtype) in enumerate(setups):
        run = RunConditions(f"run-{i}", "cpu", "CPU X (AVX512)", dtype, "ncdhw", runtime == "compile", 2,
                            "stock", runtime)
        store.append(rows, run, f"2026-03-0{i + 1}T00:00:00+00:00")
        (store.root / "runs").mkdir(exist_ok=True)
        store.write_environment(run.run_id, {"cpu_flags": ["AVX2", "FMA", "AVX-512F", "AVX512-BF16"]})
    return newest(load_results(store.root))


def test_each_model_s_fastest_setup_is_marked_and_footnote_5_is_judged_per_setup(tmp_path):
    rows = _store(tmp_path, [_speed("mfnet", "eager", "fp32", 110, 9.0, 100),
                             _speed("res3d", "eager", "fp32", 240, 9.1, 186),
                             _speed("mfnet", "openvino", "bf16", 50, 21.0, 237),
                             _speed("res3d", "openvino", "bf16", 20, 51.7, 1053)])
    text = "\n".join(runtime_section(rows, tmp_path))
    assert "| model | eager fp32 | openvino bf16 |" in text
    assert "| MF-Net | 110.0 / 9.00 | 50.00 / **21.00** |" in text
    assert "eager fp32 **0.54×** ✗; openvino bf16 **0.23×** ✗" in text
    assert "This CPU has AVX512-BF16 for bf16 (the instruction sets its runs recorded)." in text
    assert (tmp_path / "runtimes_0.png").exists()  # MF-Net has the paper's Kinetics accuracy


def test_no_section_where_only_eager_fp32_was_timed(tmp_path):
    rows = _store(tmp_path, [_speed("mfnet", "eager", "fp32", 110, 9.0, 100)])
    assert runtime_section(rows, tmp_path) == []


def test_a_model_timed_on_eager_fp32_alone_is_left_out_of_the_race(tmp_path):
    rows = _store(tmp_path, [_speed("mfnet", "eager", "fp32", 110, 9.0, 100),
                             _speed("res3d", "eager", "fp32", 240, 9.1, 186),
                             _speed("mfnet", "openvino", "fp32", 90, 10.0, 110)])
    text = "\n".join(runtime_section(rows, tmp_path))
    assert "| MF-Net | 110.0 / 9.00 | 90.00 / **10.00** |" in text
    assert "| Res3D |" not in text
