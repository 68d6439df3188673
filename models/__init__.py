"""MF-Net and the baselines of Chen et al. (ECCV 2018) behind one registry."""

from models.checkpoint import CheckpointError, inflate_2d_to_3d, load_checkpoint, save_checkpoint
from models.registry import (
    GROUPS,
    ModelImportError,
    check_input,
    create_model,
    display_name,
    get_spec,
    import_models,
    list_models,
    register_model,
)
from models.specs import ModelSpec

__all__ = ["GROUPS", "CheckpointError", "ModelImportError", "ModelSpec", "check_input", "create_model",
           "display_name", "get_spec", "import_models", "register_model",
           "inflate_2d_to_3d", "list_models", "load_checkpoint", "save_checkpoint"]
