"""Loading checkpoints: the authors' released files, ImageNet 2D -> 3D inflation, and our own.

A checkpoint is untrusted input, so every file goes through ``torch.load(weights_only=True)``,
and a file that does not match the model raises ``CheckpointError`` naming what is wrong; a
file is never loaded in part. The released formats are listed in ``docs/authors-release.md``
("Checkpoints").

Fine-tuning (a Kinetics-400 file into a 101-class UCF-101 model) keeps everything but the
classifier, whose class count differs, and starts a new one; ``load_checkpoint`` does that only
when asked (``new_classifier=True``) and only when the classifier is all that does not fit.
"""

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

# Written into our own files so a reader can tell them from the authors' releases.
FORMAT = "mfnet-suite/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model. The message is one line."""


def refusal(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line. Never torch's advice to
    load it with ``weights_only=False``: that runs whatever code the file holds."""
    text = str(exc)
    if "Weights only load failed" in text:
        named = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
        if named:
            return (f"it needs the Python global {named.group(1) or named.group(2)}, which a weights-only "
                    "load refuses (loading it could run code); this suite loads tensors only")
        opcode = re.search(r"Unsupported operand (\d+)", text)
        what = f"pickle opcode {opcode.group(1)}" if opcode else "an object that is not a tensor"
        return f"not a PyTorch checkpoint of tensors (a weights-only load refuses its {what})"
    if isinstance(exc, KeyError) or "invalid load key" in text or "magic number" in text:
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle of tensors)"
    return f"{type(exc).__name__}: {whole_message(exc)}"


def whole_message(exc: Exception, limit: int = 300) -> str:
    """All of ``exc``'s message on one line, cut at ``limit`` characters (a state dict's load
    error says what it lacks on its second line)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of any supported file: plain state dict, ``{'state_dict': ...}`` (the
    authors' 3D files, keys prefixed ``module.``), or ours (``{'format', 'model', ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing a global, a truncated zip, not a torch file...
        raise CheckpointError(f"cannot read checkpoint {path} safely: {refusal(exc)}") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        obj = obj.get("model")
    elif isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of named tensors")
    # DataParallel / DistributedDataParallel wrap every key as ``module.<name>``
    return {k.removeprefix("module."): v for k, v in obj.items()}


def inflate_2d_to_3d(state_2d: Mapping[str, torch.Tensor], model_3d: nn.Module,
                     skip: tuple[str, ...] = ("classifier.", "fc.")) -> dict[str, torch.Tensor]:
    """I3D-style inflation (Carreira & Zisserman 2017; MF-Net Section 3.3) for any 2D -> 3D pair
    whose parameter names agree: a 2D kernel ``[o, i, k, k]`` becomes ``[o, i, t, k, k]`` by
    repeating it ``t`` times and dividing by ``t``, so a clip of identical frames gives the 2D
    response. Other tensors are copied as they are; keys starting with ``skip`` (the classifier)
    are left out. Returns a state dict for ``model_3d``, which is not modified."""
    target = model_3d.state_dict()
    inflated = {}
    for name, tensor in state_2d.items():
        if name.startswith(skip) or name not in target:
            continue
        want = target[name].shape
        if tensor.dim() == 4 and len(want) == 5 and tensor.shape == want[:2] + want[3:]:
            t = want[2]
            tensor = tensor.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        inflated[name] = tensor
    return inflated


def classifier_name(model: nn.Module) -> str | None:
    """The module that maps features to class scores: the model's last Linear or Conv (S3D's
    classifier is a 1x1x1 conv)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            found = name
    return found


def file_digest(path: str | os.PathLike) -> str:
    """The file's SHA-256 prefix (12 hex digits): recorded with every row its weights made."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *,
                    new_classifier: bool = False) -> str | None:
    """Load ``path`` into ``model`` in full, or raise ``CheckpointError`` and leave it untouched.

    A 2D file given to a 3D model is inflated; the classifier is then left at its initial
    values, as in the paper's initialisation from ImageNet. Missing ``num_batches_tracked``
    buffers (files saved by PyTorch 0.4) keep the model's values. With ``new_classifier``, a
    classifier whose class count differs from the model's is not loaded and the model's
    freshly initialised one is kept. Returns a one-line message when that happened.
    """
    state = read_state_dict(path)
    target = model.state_dict()
    allowed_missing = set()
    if _is_2d_into_3d(state, target):
        state = inflate_2d_to_3d(state, model)
        allowed_missing = {k for k in target if k.startswith(("classifier.", "fc."))}
    allowed_missing |= {k for k in target if k.endswith("num_batches_tracked")}
    message = None
    head = classifier_name(model)
    if new_classifier and head is not None:
        keys = [k for k in target if k.startswith(head + ".")]
        if any(k in state and state[k].shape != target[k].shape for k in keys):
            classes = state[keys[0]].shape[0] if keys[0] in state else "?"
            message = (f"fine-tuning: kept the backbone from {Path(path).name} and started a new "
                       f"{target[keys[0]].shape[0]}-class classifier ({head}; the file's has "
                       f"{classes} classes)")
            state = {k: v for k, v in state.items() if k not in keys}
            allowed_missing |= set(keys)
    missing = sorted(set(target) - set(state) - allowed_missing)
    unexpected = sorted(set(state) - set(target))
    shared = sorted(set(state) & set(target))
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in shared if state[k].shape != target[k].shape]
    mismatched += [f"{k} is {state[k].dtype} where the model's is {target[k].dtype}"
                   for k in shared if target[k].is_floating_point() and not state[k].is_floating_point()]
    bad = [k for k in shared if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if bad:
        mismatched.append(f"non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                          + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: "
                              + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return message


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> None:
    """Our own format, written atomically (temp file + rename) so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two writers never share one
    try:
        torch.save({"format": FORMAT, "model": model.state_dict(), **extra}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_2d_into_3d(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> bool:
    """True when the file's conv kernels are 4-D where the model's are 5-D."""
    return any(v.dim() == 4 and k in target and target[k].dim() == 5 for k, v in state.items())
