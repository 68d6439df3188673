"""Runtimes a model's inference is timed on, as people deploy video models: PyTorch eager (each
model's default kernels), ``torch.compile`` (inductor), ONNX Runtime and OpenVINO (from one ONNX
export per model and input, ``export.py``), and TensorRT through torch-tensorrt on CUDA.

``engines.py`` runs an exported model; ``check.py`` compares a runtime's outputs with eager's
before it is timed; ``workload.py`` gives the timing code a workload whatever the runtime."""

from benchmarks.runtimes.availability import RUNTIMES, TRAINS, exported, native_why_not, refusal, version, why_not

__all__ = ["RUNTIMES", "TRAINS", "exported", "native_why_not", "refusal", "version", "why_not"]
