"""An exported model on its runtime, one engine per batch size: called with a clip batch (a
contiguous CPU tensor), it returns the logits. Threads are the run's (``torch.get_num_threads()``)
in every runtime; each engine's settings are in ``settings`` for the run's record."""

from pathlib import Path

import torch

# OpenVINO's inference precision by the suite's dtype names
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OnnxRuntimeEngine:
    """ONNX Runtime's CPU provider: all graph optimisations, ``threads`` intra-op threads, one
    inter-op thread and sequential execution (one request at a time, as eager runs)."""

    def __init__(self, path: Path, shape: tuple[int, ...], threads: int, dtype: str = "fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are not the run's
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.settings = {"provider": "CPUExecutionProvider", "intra_op_num_threads": threads,
                         "execution_mode": "sequential"}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0])


class OpenVinoEngine:
    """OpenVINO's CPU plugin on the model reshaped to the static input ``shape`` (its kernels are
    chosen per shape), ``threads`` inference threads, the dtype as its inference precision, and the
    latency hint: one synchronous request at a time, as every runtime here is timed."""

    def __init__(self, path: Path, shape: tuple[int, ...], threads: int, dtype: str = "fp32"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        model.reshape({model.input(0): list(shape)})
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype]}
        self.settings = {"device": "CPU", **config}
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: x.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


class TensorRTEngine:
    """TensorRT through torch-tensorrt (CUDA): the PyTorch model compiled for the static input
    ``shape`` in ``dtype`` (its enabled precision), on the run's GPU."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...], dtype: str = "fp32"):
        import torch_tensorrt

        precision = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.module = torch_tensorrt.compile(model.eval(), ir="dynamo",
                                             inputs=[torch_tensorrt.Input(shape, dtype=torch.float32)],
                                             enabled_precisions={precision})
        self.settings = {"ir": "dynamo", "enabled_precisions": dtype, "input_shape": list(shape)}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


ENGINES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}
