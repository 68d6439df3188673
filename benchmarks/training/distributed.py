"""DistributedDataParallel under ``torchrun``: the process group (NCCL on GPUs, gloo on CPU),
sums across ranks, and gradients laid out as DDP's buckets want them."""

import os
from functools import partial

import torch
import torch.distributed as dist
from torch import nn


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return (dist.get_rank() if world > 1 else 0), world, device

def all_sum(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

def match_gradient_strides(model: nn.Module) -> None:
    """Give every gradient its parameter's strides before DDP's reducer sees it. MF-Net's
    channels-last 1x1x1 convs return weight gradients whose size-1 dimensions carry
    channels-last strides; DDP then warns ("Grad strides do not match bucket view strides")
    and takes a slow path on every step. Only mismatched gradients are copied."""
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(partial(_with_strides_of, param))

def _with_strides_of(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    if grad.stride() == param.stride() or grad.layout != torch.strided:
        return grad
    return torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype,
                               device=grad.device).copy_(grad)
