"""The model registry: names -> specs. The suite's models come from ``models/specs.py``; anyone
can add their own where the model is defined, with ``@register_model``:

    import models

    @models.register_model(input_shape=(3, 16, 112, 112), num_classes=400,
                           display_name="TinyNet 3D")
    def tinynet3d(*, num_classes: int = 400, **kwargs):
        return TinyNet3D(num_classes=num_classes, **kwargs)

A file or module outside the repository is loaded with ``import_models(PATH or module)`` (the
``--import`` flag of ``run.py``, ``train.py`` and ``report.py``); an installed package offers
models through the ``mfnet_suite.models`` entry-point group, loaded on first use.
"""

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.errors import first_line
from models.specs import ALL_SPECS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec

ENTRY_POINT_GROUP = "mfnet_suite.models"
_REGISTRY: dict[str, ModelSpec] = {}
_entry_points_loaded = False


class ModelImportError(ValueError):
    """A model file or module that cannot be imported; the message is one line."""


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered "
                         f"({_REGISTRY[spec.name].provenance}); choose another name")
    _REGISTRY[spec.name] = spec
    return spec


def register_model(builder: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   input_shape: tuple[int, ...], num_classes: int, display_name: str,
                   min_input: tuple[int, ...] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   provenance: str | None = None, family: str = ""):
    """Register a builder ``f(*, num_classes, **kwargs) -> nn.Module`` under its function name
    (or ``name``). ``input_shape`` is (C, T, H, W) for clips or (C, H, W) for images: the input
    its cost is quoted at; ``min_input`` the smallest it accepts. Returns the builder as is."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = ModelSpec(
            name or fn.__name__, fn, tuple(input_shape), num_classes,
            provenance or f"{fn.__module__}.{fn.__qualname__}", "exact", mean=tuple(mean),
            std=tuple(std), in_paper=False, display_name=display_name, family=family,
            min_input=None if min_input is None else tuple(min_input), origin="user")
        check_metadata(spec)
        register(spec)
        return fn

    return add if builder is None else add(builder)


def check_metadata(spec: ModelSpec) -> None:
    """The metadata every model must have, one line per problem (the registry's schema)."""
    problems = []
    if not spec.name.isidentifier():
        problems.append(f"name {spec.name!r} is not an identifier")
    if len(spec.input_shape) not in (3, 4) or spec.input_shape[0] != 3 or min(spec.input_shape) < 1:
        problems.append(f"input_shape {spec.input_shape} is not (3, T, H, W) or (3, H, W)")
    if spec.min_input is not None and (len(spec.min_input) != len(spec.input_shape) or any(
            a > b for a, b in zip(spec.min_input, spec.input_shape))):
        problems.append(f"min_input {spec.min_input} does not fit under input_shape {spec.input_shape}")
    if not (isinstance(spec.num_classes, int) and spec.num_classes >= 1):
        problems.append(f"num_classes {spec.num_classes!r} is not a positive integer")
    if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
        problems.append("mean and std need three values each, std > 0")
    if not (spec.display_name or spec.origin == "suite"):
        problems.append("display_name is empty")
    if any(c in spec.display_name for c in "|\n\r"):
        problems.append(f"display_name {spec.display_name!r} holds '|' or a line break (it is printed in "
                        "Markdown tables)")
    if problems:
        raise ValueError(f"model {spec.name!r}: {'; '.join(problems)}")


for _spec in ALL_SPECS:
    register(_spec)

# groups a user can name instead of a list of models
GROUPS = {
    "all": lambda s: True,
    "video": lambda s: s.is_video,
    "image": lambda s: not s.is_video,
    "paper": lambda s: s.in_paper,
    "paper-video": lambda s: s.in_paper and s.is_video and s.family != "frame",
    "user": lambda s: s.origin == "user",
}


def import_models(target: str) -> list[str]:
    """Import a ``.py`` file or an importable module whose ``@register_model`` decorators add
    models; returns the names it added. Errors are one line (``ModelImportError``)."""
    before = set(_REGISTRY)
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise ModelImportError(f"--import {target}: no such file")
            module_name = f"mfnet_suite_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(target)
    except ModelImportError:
        raise
    except Exception as exc:  # a syntax error, a missing package, a clash, a bad decorator
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        reason = first_line(exc, "")
        raise ModelImportError(f"--import {target}: {type(exc).__name__}: {reason}{where}") from None
    return [name for name in _REGISTRY if name not in before]


def load_entry_points() -> None:
    """Models offered by installed packages (entry-point group ``mfnet_suite.models``), once.
    One that fails to load is skipped with a one-line warning: it must not break the suite."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            reason = first_line(exc)
            print(f"warning: skipped models from entry point {entry.name} ({entry.value}): {reason}",
                  file=sys.stderr)


def list_models(group: str = "all") -> list[str]:
    """Registered names, in registration order; ``group`` is one of ``GROUPS``."""
    load_entry_points()
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
    return [name for name, spec in _REGISTRY.items() if GROUPS[group](spec)]


def get_spec(name: str) -> ModelSpec:
    load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(_REGISTRY)} "
                         "(a model of your own: --import FILE.py)") from None


def display_name(name: str) -> str:
    """The name a reader knows the model by: the one a user registered, the paper's
    (``models.ledger.DISPLAY_NAMES``), a 2D model's run per frame as "<its name> (per frame)",
    or the registry name."""
    from models.ledger import DISPLAY_NAMES

    spec = _REGISTRY.get(name)
    if spec is not None and spec.display_name:
        return spec.display_name
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    if spec is not None and spec.family == "frame" and name.endswith("_frames"):
        return f"{display_name(name.removesuffix('_frames'))} (per frame)"
    return name


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build ``name`` with fresh weights; ``num_classes=None`` takes the spec's default."""
    spec = get_spec(name)
    return spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes,
                        **kwargs)


def check_input(name: str, shape: tuple[int, ...], **kwargs) -> None:
    """Run ``name`` once on the meta device on a batch of ``shape`` (N, C, [T,] H, W): an input
    too small for its pooling fails here, with one line naming the model, and nothing is
    allocated."""
    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs).eval()
            x = torch.empty(shape)
    except Exception as exc:  # an unknown builder argument, or a builder that fails
        first = first_line(exc)
        args = f" with {kwargs}" if kwargs else ""
        raise ValueError(f"cannot build {name}{args}: {type(exc).__name__}: {first}") from None
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # whatever a model's forward raises on an input it cannot take
        if _data_dependent(exc):  # a forward that reads values (.item()) cannot run on meta
            return _check_on_real_tensors(name, shape, kwargs)
        raise _does_not_fit(name, shape, exc) from None


def _data_dependent(exc: Exception) -> bool:
    """Whether a forward failed on the meta device for reading values (``.item()``, ``.tolist()``,
    ``.numpy()``): their errors name the meta device, a shape error does not."""
    return "meta" in str(exc)


def _check_on_real_tensors(name: str, shape: tuple[int, ...], kwargs: dict) -> None:
    """``check_input`` for a model whose forward reads tensor values: one call on zeros at the
    given shape, on the CPU."""
    try:
        model = create_model(name, **kwargs).eval()
        with torch.no_grad():
            model(torch.zeros(shape))
    except Exception as exc:
        raise _does_not_fit(name, shape, exc) from None


def _does_not_fit(name: str, shape: tuple[int, ...], exc: Exception) -> ValueError:
    """The one line for a forward that failed: its first line, named by its type where that is
    not a shape error's (an ``assert`` in a forward, a ``TypeError``)."""
    first = first_line(exc)
    if not isinstance(exc, (RuntimeError, ValueError, IndexError)) or not first:
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return ValueError(f"input {'x'.join(map(str, shape[2:]))} does not fit {name}: {first}")
