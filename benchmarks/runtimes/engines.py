"""An exported model on its runtime, one engine per batch size: called with a clip batch (a
contiguous CPU tensor), it returns the logits. Threads are the run's (``torch.get_num_threads()``)
in every runtime; each engine's settings are in ``settings`` for the run's record."""

from pathlib import Path

import numpy as np
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
    """OpenVINO's CPU plugin on the model reshaped to a static input (its kernels are chosen per
    shape), ``threads`` inference threads and the dtype as its inference precision. At batch 1 the
    latency hint: one synchronous request. At a larger batch the throughput hint, as OpenVINO's
    ``benchmark_app`` runs it: the plugin's optimal number of requests (its CPU streams) in flight
    at once, the batch split between them, one step ending when all are done; where the batch does
    not split evenly, or the plugin asks for one request, a single synchronous request. Measured on
    a 2-core Intel Xeon (AMX), MF-Net at batch 4: fp32 6.83 clips/s with two requests of 2 against
    6.60 with the latency hint, bf16 23.2 against 21.3; the throughput hint with one synchronous
    request of 4 ran at half (3.28)."""

    def __init__(self, path: Path, shape: tuple[int, ...], threads: int, dtype: str = "fp32"):
        import openvino as ov

        self.core, self.path = ov.Core(), path
        hint = "LATENCY" if shape[0] == 1 else "THROUGHPUT"
        self.config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint,
                       "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype]}
        compiled = self.compiled(shape)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if hint == "THROUGHPUT" else 1
        if requests > 1 and shape[0] % requests == 0:
            compiled = self.compiled((shape[0] // requests, *shape[1:]))
            self.queue = ov.AsyncInferQueue(compiled, requests)
            self.queue.set_callback(self._keep)
        else:
            requests, self.queue = 1, None
            self.request = compiled.create_infer_request()
        self.requests, self.outputs = requests, [None] * requests
        self.settings = {"device": "CPU", **self.config, "requests": requests,
                         "batch_per_request": shape[0] // requests}

    def compiled(self, shape: tuple[int, ...]):
        model = self.core.read_model(str(self.path))
        model.reshape({model.input(0): list(shape)})
        return self.core.compile_model(model, "CPU", self.config)

    def _keep(self, request, index: int) -> None:
        self.outputs[index] = request.get_output_tensor(0).data.copy()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.queue is None:
            self.request.infer({0: x.numpy()})
            return torch.from_numpy(self.request.get_output_tensor(0).data.copy())
        for index, part in enumerate(x.numpy().reshape(self.requests, -1, *x.shape[1:])):
            self.queue.start_async({0: part}, index)
        self.queue.wait_all()
        return torch.from_numpy(np.concatenate(self.outputs))


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
