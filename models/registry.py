"""The model registry: names -> specs, with a helpful error for a name that is not there."""

import difflib

import torch
from torch import nn

from models.specs import ALL_SPECS, ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


for _spec in ALL_SPECS:
    register(_spec)

# groups a user can name instead of a list of models
GROUPS = {
    "all": lambda s: True,
    "video": lambda s: s.is_video,
    "image": lambda s: not s.is_video,
    "paper": lambda s: s.in_paper,
    "paper-video": lambda s: s.in_paper and s.is_video and not s.name.endswith("_frames"),
}


def list_models(group: str = "all") -> list[str]:
    """Registered names, in registration order; ``group`` is one of ``GROUPS``."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
    return [name for name, spec in _REGISTRY.items() if GROUPS[group](spec)]


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(_REGISTRY)}") from None


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
    except (TypeError, ValueError) as exc:  # an unknown or ill-typed builder argument
        raise ValueError(f"cannot build {name} with {kwargs}: {exc}") from None
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = "x".join(map(str, shape[2:]))
        raise ValueError(f"input {size} does not fit {name}: {first}") from None
