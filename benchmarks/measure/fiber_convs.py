"""The fiber convs timed one by one (``benchmarks/fiber_conv.py``): the "fibers as a batch
dimension" lever measured, beside oneDNN and the suite's kernel.

One of MF-Net's 3x3x3 fiber convs (16 groups) is timed three ways on the same input:

- ``onednn``: ``F.conv3d(groups=16)`` on a channels-last-3d input, MF-Net's default path;
- ``onednn-ncdhw``: the same conv on a contiguous (NCDHW) input, the reference path;
- ``fibers-bmm``: fibers as the batch of a ``torch.bmm``. Weights differ per fiber, so the
  input is unfolded into its 27 taps per fiber (im2col) first; the output is
  ``(16, Cg_out, Cg_in * 27) @ (16, Cg_in * 27, T*H*W)``. The unfold writes 27x the input.
- ``suite-ncdhw`` and ``suite-cl``: the suite's direct kernel (``models/kernels``) on
  the NCDHW and the channels-last input, where it could be built (the channels-last one on an
  AVX2 CPU), with its weights packed once, as a model in inference keeps them. The path it
  takes (AVX-512 or AVX2) is in the first line; ``MFNET_FIBER_KERNEL=avx2`` times the AVX2 path
  on a CPU with AVX-512.

Every variant is checked against ``onednn`` before it is timed. Rates are useful multiply-adds
per second (the padding oneDNN adds for small channel blocks is not counted as work).
"""

from functools import partial

import torch
import torch.nn.functional as F

from benchmarks.measure.timing import time_step
from models import kernels
from models.kernels import build, paths
from models.kernels.ops import fiber

# MF-Net 3D at 16x224x224, batch 1: the conv_m1 of each stage (channels in = out = num_mid)
STAGES = {"conv2": (96, 8, 56, 56), "conv3": (192, 8, 28, 28), "conv4": (384, 8, 14, 14),
          "conv5": (768, 8, 7, 7)}
GROUPS = 16


def fibers_bmm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A stride-1, padding-1, 3x3x3 grouped conv as im2col + one batched matmul over fibers."""
    n, c, t, h, w = x.shape
    cg = c // GROUPS
    padded = F.pad(x, (1, 1, 1, 1, 1, 1))
    # (n, c, t, h, w, 3, 3, 3): every output position's 27 taps, a view until reshaped
    taps = padded.unfold(2, 3, 1).unfold(3, 3, 1).unfold(4, 3, 1)
    cols = (taps.reshape(n, GROUPS, cg, t * h * w, 27).permute(0, 1, 2, 4, 3)
            .reshape(n * GROUPS, cg * 27, t * h * w))
    w_ = weight.reshape(GROUPS, -1, cg * 27).repeat(n, 1, 1)
    return torch.bmm(w_, cols).reshape(n, -1, t, h, w)


def print_rates(batch: int = 1, min_run_time: float = 1.0) -> None:
    """Each stage's 3x3x3 fiber conv timed every way this machine runs it, each checked against
    oneDNN's first: useful GMAC/s (ms per call), printed."""
    torch.manual_seed(0)
    ext = build.extension()
    print(f"{torch.get_num_threads()} threads, batch {batch}, {kernels.status()}; useful GMAC/s (ms per call)")
    names = ["onednn", "onednn-ncdhw", "fibers-bmm"]
    names += ["suite-ncdhw"] if ext is not None else []
    names += ["suite-cl"] if ext is not None and paths.channels_last_path() else []
    print(f"{'stage':6} {'shape':>16} {'Cg':>3} " + " ".join(f"{v:>20}" for v in names))
    with torch.inference_mode():
        for stage, (c, t, h, w) in STAGES.items():
            variants = stage_variants(names, batch, c, t, h, w)
            reference = variants["onednn"]()
            macs = reference.numel() * (c // GROUPS) * 27
            cells = []
            for step in variants.values():
                torch.testing.assert_close(step(), reference, rtol=1e-4, atol=1e-4)
                seconds = time_step(step, lambda: None, min_run_time).median
                cells.append(f"{macs / seconds / 1e9:8.1f} ({seconds * 1e3:7.2f})")
            print(f"{stage:6} {'x'.join(map(str, (c, t, h, w))):>16} {c // GROUPS:>3} "
                  + " ".join(f"{cell:>20}" for cell in cells))


def stage_variants(names: list[str], batch: int, c: int, t: int, h: int, w: int) -> dict:
    """One stage's conv as a call per way of running it, on the same input and weights."""
    x = torch.randn(batch, c, t, h, w)
    weight = torch.randn(c, c // GROUPS, 3, 3, 3) / (c // GROUPS * 27) ** 0.5
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    conv = partial(F.conv3d, weight=weight, padding=1, groups=GROUPS)
    variants = {"onednn": partial(conv, x_cl), "onednn-ncdhw": partial(conv, x),
                "fibers-bmm": partial(fibers_bmm, x, weight)}
    if "suite-ncdhw" in names:
        variants["suite-ncdhw"] = partial(fiber.fiber_conv3d, x, weight, GROUPS)
    if "suite-cl" in names:
        variants["suite-cl"] = partial(fiber.forward_cl, x_cl, fiber.pack(weight, GROUPS), c // GROUPS, (1, 1, 1))
    return variants
