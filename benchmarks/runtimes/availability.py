"""Which runtimes there are, which train as well as infer, and why one cannot run here."""

import importlib.metadata

from benchmarks.measure import peak

# eager: each model's default kernels (``--fiber-kernel`` chooses); compile: torch.compile
# (inductor); the others run an exported model
RUNTIMES = ("eager", "compile", "onnxruntime", "openvino", "tensorrt")
TRAINS = ("eager", "compile")  # the others are inference engines: no training rows
# the package each runtime needs, and what it is called on PyPI
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "torch-tensorrt"}
# dtypes each exported runtime runs (onnxruntime's CPU provider has no bf16 or fp16 convs)
DTYPES = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "fp16"), "tensorrt": ("fp32", "fp16", "bf16")}
DEVICES = {"onnxruntime": ("cpu",), "openvino": ("cpu",), "tensorrt": ("cuda",)}


def exported(runtime: str) -> bool:
    """Whether ``runtime`` runs an exported model rather than the PyTorch module."""
    return runtime not in TRAINS


def version(runtime: str) -> str:
    """The runtime's package version ("" for eager and compile: torch's, recorded already)."""
    if not exported(runtime):
        return ""
    try:
        return importlib.metadata.version(PACKAGES[runtime])
    except importlib.metadata.PackageNotFoundError:
        return ""


def native_why_not(device: str, dtype: str) -> str:
    """Why ``dtype`` is not run on ``device`` at all: a half precision a CPU only emulates (minutes
    of emulation measure the emulation, not the model); "" where it runs natively."""
    if device == "cpu" and dtype in ("bf16", "fp16") and not peak.runs_natively(device, dtype):
        flags = "AVX512-BF16 or AMX" if dtype == "bf16" else "AVX512-FP16 or AMX-FP16"
        return f"{dtype} is emulated on this CPU (it has no {flags}): nothing timed"
    return ""


def refusal(runtime: str) -> str:
    """Why ``runtime`` can never run in this installation: an unknown name, a missing package."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}"
    if exported(runtime) and not version(runtime):
        return f"the {PACKAGES[runtime]} package is not installed (pip install {PACKAGES[runtime]})"
    return ""


# PyTorch's CPU convolutions in fp16 run a reference path even where the CPU has AVX512-FP16:
# on a 2-core Intel Xeon with it, MF-Net's first fp16 inference step (the path probe's) had not
# finished after 15 minutes, where bf16 takes 0.4 s
TORCH_CPU_FP16 = ("PyTorch's CPU convolutions have no fp16 kernels (MF-Net's first fp16 step ran over 15 "
                  "minutes on a CPU with AVX512-FP16): nothing timed")


def why_not(runtime: str, device: str, dtype: str) -> str:
    """Why ``runtime`` cannot run ``dtype`` on ``device`` here, in one line; "" where it can."""
    why = refusal(runtime) or native_why_not(device, dtype)
    if not why and runtime in ("eager", "compile") and device == "cpu" and dtype == "fp16":
        return TORCH_CPU_FP16
    if why or not exported(runtime):
        return why
    if device not in DEVICES[runtime]:
        return f"{runtime} runs on {' or '.join(DEVICES[runtime])} here, not {device}"
    if dtype not in DTYPES[runtime]:
        return f"{runtime} has no {dtype} here (it runs {', '.join(DTYPES[runtime])})"
    return ""
