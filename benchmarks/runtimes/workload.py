"""A model on a runtime, with what the timing code asks of a workload (``measure/workload.py``'s
inference half): its inputs, one inference step, a synchronisation; and eager's outputs on a
fixed input, which the runtime's are checked against before it is timed (``check.py``)."""

from pathlib import Path

import torch

from benchmarks.measure.workload import Setup, Workload
from benchmarks.runtimes import export
from benchmarks.runtimes.engines import ENGINES, TensorRTEngine

CHECK_BATCH = 2  # the fixed input's batch: a batch dimension that is really dynamic
CHECK_SEED = 1234


class RuntimeWorkload:
    """``name`` at ``clip`` on ``runtime`` (onnxruntime, openvino or tensorrt) in ``setup``'s
    dtype: the same weights as eager's ``Workload`` (seeded alike), exported once into ``cache``
    for the ONNX runtimes; one engine per batch size, made before it is timed."""

    def __init__(self, name: str, setup: Setup, clip, runtime: str, cache: Path):
        self.name, self.setup, self.clip, self.runtime, self.cache = name, setup, clip, runtime, cache
        self.eager = Workload(name, Setup(setup.device, "fp32", fiber_kernel=False), clip)
        self.eager.eager_model.eval()
        self.engines: dict[int, object] = {}
        self.path = None
        if runtime in ENGINES:
            self.path = export.onnx_file(self.eager.eager_model.cpu(), name, self.fixed_input().cpu(), cache)

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.eager.inputs(batch)
        return x.contiguous(), y

    def fixed_input(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(CHECK_SEED)
        shape = self.eager.inputs(CHECK_BATCH)[0].shape
        return torch.randn(shape, generator=generator).to(self.setup.device)

    def reference(self) -> torch.Tensor:
        """Eager fp32 on PyTorch's own kernels, on the fixed input: what every runtime must give."""
        with torch.inference_mode():
            return self.eager.eager_model(self.fixed_input()).float().cpu()

    def outputs(self) -> torch.Tensor:
        return self.engine(CHECK_BATCH)(self.fixed_input()).float().cpu()

    def engine(self, batch: int):
        if batch not in self.engines:
            shape = (batch, *self.inputs(1)[0].shape[1:])
            if self.runtime == "tensorrt":
                self.engines[batch] = TensorRTEngine(self.eager.eager_model, shape, self.setup.dtype)
            else:
                self.engines[batch] = ENGINES[self.runtime](self.path, shape, torch.get_num_threads(), self.setup.dtype)
        return self.engines[batch]

    def settings(self) -> dict:
        """Each engine's settings, by batch size, for the run's record."""
        return {str(batch): engine.settings for batch, engine in self.engines.items()}

    def infer_step(self, x: torch.Tensor) -> None:
        self.engine(x.shape[0])(x)

    def synchronize(self) -> None:
        if self.setup.device == "cuda":
            torch.cuda.synchronize()


def compiled_outputs(workload: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    """(eager's outputs, the compiled model's) on the fixed input, for ``torch.compile``'s check:
    the same module before and after compilation, in the run's dtype for the compiled one."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    x = torch.randn(workload.inputs(CHECK_BATCH)[0].shape, generator=generator).to(workload.setup.device)
    if workload.setup.channels_last:
        x = x.contiguous(memory_format=workload.memory_format)
    workload.model.eval()
    with torch.inference_mode():
        reference = workload.eager_model(x).float().cpu()
        with workload.autocast(), workload.freezing():
            got = workload.model(x).float().cpu()
    return reference, got
