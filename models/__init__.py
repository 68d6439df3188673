"""MF-Net and the baselines of Chen et al. (ECCV 2018) behind one registry."""

from models.checkpoint import CheckpointError, inflate_2d_to_3d, load_checkpoint, save_checkpoint
from models.registry import GROUPS, check_input, create_model, get_spec, list_models
from models.specs import ModelSpec

__all__ = ["GROUPS", "CheckpointError", "ModelSpec", "check_input", "create_model", "get_spec",
           "inflate_2d_to_3d", "list_models", "load_checkpoint", "save_checkpoint"]
