"""Runtimes (benchmarks/runtimes): why one cannot run here, the ONNX export and its cache, each
engine's outputs against eager's, the check that refuses a runtime that disagrees, and TensorRT's
call (mocked: no GPU here)."""

import sys
import types

import pytest
import torch

from benchmarks import runtimes
from benchmarks.machine import environment
from benchmarks.measure.workload import Setup
from benchmarks.runtimes import availability, check, export
from benchmarks.runtimes.workload import RuntimeWorkload

ENGINES = [r for r in ("onnxruntime", "openvino") if not runtimes.refusal(r)]


def test_why_a_runtime_cannot_run_is_one_line(monkeypatch):
    assert runtimes.why_not("eager", "cpu", "fp32") == ""
    assert runtimes.why_not("nope", "cpu", "fp32").startswith("unknown runtime 'nope'; choose from eager")
    assert runtimes.why_not("tensorrt", "cpu", "fp32") in ("tensorrt runs on cuda here, not cpu",
                                                          "the torch-tensorrt package is not installed "
                                                          "(pip install torch-tensorrt)")
    monkeypatch.setattr(availability, "version", lambda runtime: "1.0")
    assert runtimes.why_not("onnxruntime", "cpu", "bf16").startswith(("onnxruntime has no bf16 here", "bf16 is"))
    assert runtimes.why_not("openvino", "cuda", "fp32") == "openvino runs on cpu here, not cuda"
    monkeypatch.setattr(availability, "version", lambda runtime: "")
    assert runtimes.refusal("openvino") == "the openvino package is not installed (pip install openvino)"


def test_half_precision_on_a_cpu_that_emulates_it_is_refused_for_every_runtime(monkeypatch):
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA"])
    for runtime in ("eager", "compile", "openvino"):
        assert runtimes.why_not(runtime, "cpu", "bf16") == (
            "bf16 is emulated on this CPU (it has no AVX512-BF16 or AMX): nothing timed")
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA", "AVX-512F", "AVX512-BF16"])
    assert runtimes.why_not("eager", "cpu", "bf16") == ""
    assert runtimes.why_not("eager", "cuda", "bf16") == ""


def test_fp16_on_a_cpu_with_avx512_fp16_skips_pytorch_s_runtimes_in_one_line(monkeypatch):
    monkeypatch.setattr(environment, "cpu_flags", lambda: ["AVX2", "FMA", "AVX-512F", "AVX512-FP16"])
    monkeypatch.setattr(availability, "version", lambda runtime: "1.0")
    for runtime in ("eager", "compile"):
        assert runtimes.why_not(runtime, "cpu", "fp16").startswith("PyTorch's CPU convolutions have no fp16 kernels")
    assert runtimes.why_not("openvino", "cpu", "fp16") == ""
    assert runtimes.why_not("eager", "cuda", "fp16") == ""


@pytest.mark.slow  # an export and two engines per runtime
@pytest.mark.parametrize("runtime", ENGINES)
def test_an_exported_model_gives_eager_s_outputs_and_is_exported_once(tiny_models, tmp_path, monkeypatch, runtime):
    workload = RuntimeWorkload("tiny3d", Setup("cpu"), None, runtime, tmp_path)
    rows, refused = check.check_rows("tiny3d", runtime, "fp32", "4x16x16", workload.reference(), workload.outputs())
    assert refused == "" and rows[1].value < 1e-5 and rows[2].value == 100.0
    x, _ = workload.inputs(3)
    workload.infer_step(x)  # another batch size: an engine of its own
    assert set(workload.settings()) == {"2", "3"}
    assert workload.settings()["3"].get("intra_op_num_threads", workload.settings()["3"].get(
        "INFERENCE_NUM_THREADS")) == torch.get_num_threads()
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported again"))
    again = RuntimeWorkload("tiny3d", Setup("cpu"), None, runtime, tmp_path)
    assert again.path == workload.path and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
@pytest.mark.skipif("openvino" not in ENGINES, reason="openvino is not installed")
def test_openvino_splits_a_throughput_batch_between_its_requests_and_keeps_each_clip_s_logits(tiny_models, tmp_path):
    workload = RuntimeWorkload("tiny3d", Setup("cpu"), None, "openvino", tmp_path)
    x, _ = workload.inputs(4)
    together = workload.engine(4)(x)
    alone = torch.cat([workload.engine(1)(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)  # in order, none lost or repeated
    settings = workload.settings()
    assert settings["1"]["PERFORMANCE_HINT"] == "LATENCY" and settings["1"]["requests"] == 1
    assert settings["4"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert settings["4"]["requests"] * settings["4"]["batch_per_request"] == 4


@pytest.mark.slow
@pytest.mark.skipif(not ENGINES, reason="no exported runtime installed")
def test_a_model_that_does_not_export_is_one_line_and_leaves_no_file(tiny_models, tmp_path):
    with pytest.raises(export.ExportError, match="^branchy3d does not export to ONNX: ") as err:
        RuntimeWorkload("branchy3d", Setup("cpu"), None, ENGINES[0], tmp_path)
    assert "\n" not in str(err.value) and not [p for p in tmp_path.iterdir() if p.is_file()]


def test_a_runtime_that_disagrees_with_eager_is_refused_with_the_figures():
    reference = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    rows, refused = check.check_rows("m", "openvino", "fp32", "c", reference, reference + 1e-5)
    assert refused == "" and [r.metric for r in rows] == ["output_max_abs_diff", "output_rel_diff",
                                                          "output_top1_agreement"]
    rows, refused = check.check_rows("m", "openvino", "fp32", "c", reference, reference.flip(1))
    assert refused == "openvino disagrees with eager: a difference of 66.67% of the largest logit (tolerance 0.1%)"
    assert rows[2].value == 0.0
    _, refused = check.check_rows("m", "openvino", "bf16", "c", reference, reference * 1.03)
    assert refused == ""  # within bf16's tolerance
    _, refused = check.check_rows("m", "openvino", "fp32", "c", reference, reference * float("nan"))
    assert refused.startswith("openvino disagrees with eager: non-finite outputs")
    with pytest.raises(ValueError, match="outputs of shape"):
        check.agreement(reference, reference[:1])


def test_tensorrt_compiles_the_pytorch_model_for_the_batch_and_precision(monkeypatch):
    calls = {}

    class Input:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, dtype

    def compile(module, **kwargs):
        calls.update(kwargs)
        return module

    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.SimpleNamespace(compile=compile, Input=Input))
    from benchmarks.runtimes.engines import TensorRTEngine

    model = torch.nn.Linear(4, 2)
    engine = TensorRTEngine(model, (8, 4), "fp16")
    assert calls["ir"] == "dynamo" and calls["enabled_precisions"] == {torch.float16}
    assert calls["inputs"][0].shape == (8, 4) and engine.settings["input_shape"] == [8, 4]
    assert engine(torch.ones(8, 4)).shape == (8, 2)
