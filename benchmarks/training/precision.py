"""How a step runs: autocast (bf16, or fp16 with a gradient scaler) and the memory format."""

import contextlib
from dataclasses import dataclass

import torch

from benchmarks.training.config import AMP_DTYPES, Config, SettingsError


@dataclass
class Precision:
    """How steps run: autocast dtype (None: fp32), gradient scaler, memory format."""

    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False

    def autocast(self, device: torch.device):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp)

    def inputs(self, clips: torch.Tensor, device: torch.device) -> torch.Tensor:
        clips = clips.to(device, non_blocking=True)
        if self.channels_last:
            clips = clips.contiguous(memory_format=memory_format(clips.dim()))
        return clips

def memory_format(dims: int) -> torch.memory_format:
    return torch.channels_last_3d if dims == 5 else torch.channels_last

def make_precision(cfg: Config, device: torch.device) -> Precision:
    if cfg.amp == "fp16" and device.type != "cuda":
        raise SettingsError("--amp fp16 needs a CUDA GPU (fp16 autocast on a CPU has no scaler "
                            "support here); use --amp bf16 or no --amp")
    amp = AMP_DTYPES.get(cfg.amp) if cfg.amp else None
    # fp16's narrow range underflows small gradients: scale the loss (bf16 needs none)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return Precision(amp, scaler, cfg.channels_last)
