"""One ONNX file per model and input, made once and kept under the results folder: ONNX Runtime
and OpenVINO both run it. ``torch.onnx.export``'s dynamo exporter (the TorchScript one refuses
MF-Net's channels-last layout), the batch dimension left dynamic, the model on PyTorch's own
kernels (the suite's are PyTorch-only ops; an exported runtime brings its own)."""

import copy
import hashlib
import importlib.metadata
import io
import os
import uuid
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch

from models import kernels

CACHE = ".exports"  # under the results folder


class ExportError(RuntimeError):
    """A model that does not export; the message is one line naming why."""


def exporter_version() -> str:
    """What a file depends on beside the model: torch (the exporter) and onnxscript (its
    translator)."""
    try:
        script = importlib.metadata.version("onnxscript")
    except importlib.metadata.PackageNotFoundError:
        script = "none"
    return f"torch{torch.__version__}-onnxscript{script}"


def onnx_file(model: torch.nn.Module, name: str, example: torch.Tensor, cache: Path) -> Path:
    """``model`` (eval, fp32, on the CPU) as ONNX, from the cache where a file for the same model,
    input and exporter is there. The weights are part of the key: a model built from another seed
    or checkpoint is another file."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes()[:4096])
    label = "x".join(map(str, example.shape[1:]))
    path = cache / f"{name}-{label}-{digest.hexdigest()[:12]}-{exporter_version()}.onnx"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    model = kernels.use_stock_kernels(copy.deepcopy(model)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # the exporter's progress lines
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["clip"], output_names=["logits"],
                              dynamic_shapes=({0: batch},))
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ExportError(f"{name} does not export to ONNX: {type(exc).__name__}: {text}") from None
    return path

