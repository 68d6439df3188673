"""The built-in motion benchmark: a procedurally generated video dataset whose classes are
defined by motion alone, so no single frame says anything about the class.

Each clip shows one bar (random colour, length, width, angle and position) over a random static
texture. The class is how it moves:

    0-3  translation right / left / down / up, at a random speed, wrapping around the borders
    4-5  rotation clockwise / counter-clockwise about its centre (the object is a bar)

Start position, speed, colour, shape and texture are random per clip, and the marginal of any
single frame is the same for every class (uniform position, uniform angle), so a frame-based
2D model stays at chance (1/6) while a clip-based 3D model can learn the task: the paper's
central claim in miniature. Deterministic: clip ``i`` of seed ``s`` is always the same.

``MotionDataset`` renders on the fly; ``write_motion_videos`` encodes the same clips to real
video files in the ``root/<class>/<video>.mp4`` folder layout, so the decode path is exercised.

Version 2 (results are labelled ``motion/v2``) draws bigger bars (half-length 15-25% of the
side, was 12-20%), faster motion (6-12% of the side per frame, was 3-7%; rotation 0.2-0.45
rad per frame, was 0.12-0.3) over a lower-contrast texture. Measured with
``benchmarks/train.py --model mfnet --time-budget 60``: 85% at 16x32x32 where version 1 gave
32%, and 84% at 16x48x48 (76%), so the default job's smaller, cheaper clip can be learned.
A frame still says nothing about the class.
"""

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

CLASSES = ("right", "left", "down", "up", "clockwise", "counterclockwise")
DIRECTIONS = {0: (0.0, 1.0), 1: (0.0, -1.0), 2: (1.0, 0.0), 3: (-1.0, 0.0)}  # (dy, dx)
VERSION = 2
LABEL = f"motion/v{VERSION}"  # the results' dataset column: rows of another version never mix


def render_clip(label: int, frames: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """One clip, (T, 3, H, W) floats in [0, 1]."""

    def uniform(lo, hi, shape=()):
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    # a smooth random texture: coarse noise upsampled, low contrast so the object stands out
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=generator)
    texture = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                              align_corners=False)[0] * 0.3 + 0.35
    colour = uniform(0.0, 1.0, (3, 1, 1))
    colour = torch.where(colour > 0.5, colour * 0.3 + 0.7, colour * 0.3)  # saturated: visible
    y = torch.arange(size, dtype=torch.float32).view(size, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, size)
    # every class draws the same kind of object at a uniform position and angle, so a single
    # frame has the same distribution whatever the class
    centre = uniform(0, size, (2,))
    angle = uniform(0, math.pi)
    half_length, half_width = uniform(0.15, 0.25) * size, uniform(0.06, 0.1) * size
    speed = uniform(0.06, 0.12) * size  # translation: pixels per frame
    omega = uniform(0.2, 0.45)  # rotation: radians per frame, far below the bar's 180-degree symmetry
    clip = torch.empty(frames, 3, size, size)
    for t in range(frames):
        cy, cx, theta = centre[0], centre[1], angle
        if label < 4:
            dy, dx = DIRECTIONS[label]
            cy, cx = cy + dy * speed * t, cx + dx * speed * t
        else:  # image y points down, so a growing angle turns clockwise on screen
            theta = angle + (omega if label == 4 else -omega) * t
        # toroidal offsets: objects wrap around the borders
        ddy = (y - cy + size / 2) % size - size / 2
        ddx = (x - cx + size / 2) % size - size / 2
        along = ddx * torch.cos(theta) + ddy * torch.sin(theta)
        across = -ddx * torch.sin(theta) + ddy * torch.cos(theta)
        mask = (along.abs() <= half_length) & (across.abs() <= half_width)
        clip[t] = torch.where(mask, colour, texture)
    return clip


class MotionDataset(Dataset):
    """``length`` clips of ``frames`` x ``size`` x ``size``, rendered on the fly.

    Items are ``(clip, label)`` with ``clip`` shaped (3, T, H, W), normalised with ``mean`` /
    ``std`` (the model spec's), as the real-video datasets return them.
    """

    num_classes = len(CLASSES)

    def __init__(self, length: int, *, frames: int = 16, size: int = 64, seed: int = 0,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        self.length, self.frames, self.size, self.seed = length, frames, size, seed
        self.epoch = 0  # a training set draws new clips every epoch: nothing to memorise
        self.mean = torch.tensor(mean).view(3, 1, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def raw(self, index: int) -> tuple[torch.Tensor, int]:
        """(T, 3, H, W) in [0, 1] and the label; balanced classes, deterministic per index."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + index)
        label = index % self.num_classes
        return render_clip(label, self.frames, self.size, generator), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip, label = self.raw(index)
        return (clip.permute(1, 0, 2, 3) - self.mean) / self.std, label


# top-1 % of a model that cannot tell the classes apart
CHANCE = 100 / len(CLASSES)


def write_motion_videos(root: str | Path, count: int, *, frames: int = 16, size: int = 64,
                        seed: int = 0, fps: int = 25) -> list[Path]:
    """Encode ``count`` clips as H.264 MP4 files in ``root/<class>/clip_XXXXX.mp4``."""

    root = Path(root)
    dataset = MotionDataset(count, frames=frames, size=size, seed=seed)
    paths = []
    for index in range(count):
        clip, label = dataset.raw(index)
        path = root / CLASSES[label] / f"clip_{index:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, (clip * 255).round().to(torch.uint8).permute(0, 2, 3, 1), fps)
        paths.append(path)
    return paths


def write_video(path: Path, frames: torch.Tensor, fps: int = 25) -> None:
    """(T, H, W, 3) uint8 frames -> an H.264 file (near-lossless, so motion survives)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "10"}
        for frame in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
