"""Video datasets in their official layouts, decoded with PyTorchVideo's PyAV decoder.

Layouts (``--root`` points at the folder holding them):

    ucf101       ucfTrainTestlist/{classInd.txt, trainlist0K.txt, testlist0K.txt} and
                 UCF-101/<Class>/<video>.avi  (either folder may also be ``root`` itself)
    hmdb51       testTrainMulti_7030_splits/<class>_test_split<K>.txt (lines "video.avi 0|1|2":
                 1 train, 2 test, 0 unused) and hmdb51_org/<class>/<video>.avi (or ``root``)
    kinetics400  annotations/{train,val}.csv with columns label,youtube_id,time_start,
                 time_end,split and videos at {train,val}/<label>/<youtube_id>_<start:06d>_
                 <end:06d>.mp4
    folder       <split>/<class>/<video> for split in train, val; or <class>/<video> (then the
                 same videos serve for training and testing)

Clip sampling follows the authors (authors-mfnet.md): T frames at a frame interval (2 for
UCF/HMDB, one of {1,2,2,3} per clip for Kinetics); training crops a random short side in
[224, 288], a random 224 crop and a flip; testing takes N clips x M crops per video. A video
shorter than the clip is looped; one smaller than the crop is resized up.

A video that cannot be decoded (corrupt, truncated, empty) is skipped with a warning and
counted; it is never replaced by another clip.
"""

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".webm", ".mov"}


class DatasetLayoutError(ValueError):
    """A missing root or split file; the message states the expected layout (one line)."""


@dataclass(frozen=True)
class VideoItem:
    path: Path
    label: int


def _need(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{what} not found at {path}; expected layout: {layout}")
    return path


def _first_existing(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def ucf101(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    layout = ("ucfTrainTestlist/{classInd.txt,trainlist0K.txt,testlist0K.txt} and "
              "UCF-101/<Class>/<video>.avi")
    lists = _first_existing(root, "ucfTrainTestlist")
    videos = _first_existing(root, "UCF-101")
    index_lines = _need(lists / "classInd.txt", "UCF-101 classInd.txt", layout).read_text().split("\n")
    classes = [line.split()[1] for line in index_lines if line.strip()]
    split_file = _need(lists / f"{'trainlist' if train else 'testlist'}{split:02d}.txt",
                       f"UCF-101 split {split}", layout)
    items = []
    for line in split_file.read_text().splitlines():
        if line.strip():
            relative = line.split()[0]  # testlists carry no label: the class folder names it
            items.append(VideoItem(videos / relative, classes.index(relative.split("/")[0])))
    return items, classes


def hmdb51(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    layout = "testTrainMulti_7030_splits/<class>_test_split<K>.txt and hmdb51_org/<class>/<video>.avi"
    lists = _first_existing(root, "testTrainMulti_7030_splits")
    videos = _first_existing(root, "hmdb51_org")
    files = sorted(lists.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetLayoutError(f"HMDB-51 split {split} files not found in {lists}; expected "
                                 f"layout: {layout}")
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    wanted = "1" if train else "2"
    items = []
    for label, file in enumerate(files):
        for line in file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == wanted:
                items.append(VideoItem(videos / classes[label] / parts[0], label))
    return items, classes


def kinetics400(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    del split  # Kinetics has one official train/val split
    layout = ("annotations/{train,val}.csv (label,youtube_id,time_start,time_end,split) and "
              "{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4")
    part = "train" if train else "val"
    with open(_need(root / "annotations" / "train.csv", "Kinetics train.csv", layout)) as f:
        classes = sorted({row["label"] for row in csv.DictReader(f)})
    items = []
    with open(_need(root / "annotations" / f"{part}.csv", f"Kinetics {part}.csv", layout)) as f:
        for row in csv.DictReader(f):
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
            items.append(VideoItem(root / part / row["label"] / name, classes.index(row["label"])))
    return items, classes


def folder(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    del split
    _need(root, "dataset root", "<split>/<class>/<video> or <class>/<video>")
    base = root
    if (root / "train").is_dir():  # split layout: train/ and val/
        base = _need(root / ("train" if train else "val"), "folder split",
                     "train/<class>/<video> and val/<class>/<video>")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DatasetLayoutError(f"no class folders in {base}; expected layout: "
                                 "<split>/<class>/<video> or <class>/<video>")
    items = [VideoItem(path, label) for label, name in enumerate(classes)
             for path in sorted((base / name).iterdir()) if path.suffix.lower() in VIDEO_SUFFIXES]
    return items, classes


LAYOUTS = {"ucf101": ucf101, "hmdb51": hmdb51, "kinetics400": kinetics400, "folder": folder}
# frame interval per dataset (authors' recipe); Kinetics draws one per clip
INTERVALS = {"ucf101": (2,), "hmdb51": (2,), "kinetics400": (1, 2, 2, 3), "folder": (2,)}


@dataclass(frozen=True)
class ClipConfig:
    frames: int = 16
    crop: int = 224
    short_side: tuple[int, int] = (224, 288)  # training: random short side in this range
    test_short_side: int = 256  # testing: resize then crop
    intervals: tuple[int, ...] = (2,)
    flip: bool = True  # off for data whose labels a flip would change (the motion benchmark)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def decode_clip(path: Path, frames: int, interval: int, start: float | None,
                rng: random.Random) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames from ``path``, starting at fraction ``start`` of the video
    (None: random), every ``interval``-th frame, looped when the video is short."""
    from pytorchvideo.data.encoded_video import EncodedVideo

    video = EncodedVideo.from_path(str(path), decode_audio=False, decoder="pyav")
    try:
        duration = float(video.duration)
        stream = video._container.streams.video[0]  # PyAV stream: the frame rate for the window
        fps = float(stream.average_rate or 25)
        window = frames * interval / fps
        offset = max(duration - window, 0.0)
        t0 = offset * (rng.random() if start is None else start)
        data = video.get_clip(t0, min(t0 + window, duration) + 1e-3)["video"]
    finally:
        video.close()
    if data is None or data.numel() == 0:
        raise ValueError("no frames decoded")
    clip = data.permute(1, 0, 2, 3)[::interval]  # (C, T, H, W) -> (T, C, H, W)
    if clip.shape[0] < frames:  # loop a short video
        clip = clip.repeat((frames + clip.shape[0] - 1) // clip.shape[0], 1, 1, 1)
    return clip[:frames].clamp(0, 255).to(torch.uint8)


class VideoClipDataset(Dataset):
    """Clips from decoded videos. Training: one random clip per video and index. Testing:
    ``clips`` uniformly spaced clips x ``crops`` spatial crops per video, each an item, with the
    video index returned so scores can be summed per video.

    Items are ``(clip (3, T, H, W) float, label, video_index)``, or ``None`` for a video that
    failed to decode (``collate_skipping`` drops and counts those).
    """

    def __init__(self, items: list[VideoItem], config: ClipConfig, *, train: bool,
                 clips: int = 1, crops: int = 1, seed: int = 0):
        self.items, self.config, self.train = items, config, train
        self.clips, self.crops = (1, 1) if train else (clips, crops)
        self.seed, self.epoch = seed, 0
        scale = [v2.RandomResize(*config.short_side)] if train else [v2.Resize(config.test_short_side)]
        self.resize = v2.Compose(scale)
        self.flip = v2.RandomHorizontalFlip() if train and config.flip else v2.Identity()
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(config.mean, config.std)])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.clips * self.crops

    def __getitem__(self, index: int):
        video_index, view = divmod(index, self.clips * self.crops)
        clip_index, crop_index = divmod(view, self.crops)
        item = self.items[video_index]
        rng = random.Random(hash((self.seed, self.epoch, index)))
        interval = rng.choice(self.config.intervals) if self.train else self.config.intervals[0]
        start = None if self.train else (clip_index + 0.5) / self.clips
        try:
            clip = decode_clip(item.path, self.config.frames, interval, start, rng)
        except Exception as exc:  # corrupt, truncated or empty: skip and count, never substitute
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("skipping %s: %s", item.path, reason)
            return None
        clip = tv_tensors.Video(clip)
        if min(clip.shape[-2:]) < self.config.crop:  # smaller than the crop: resize up
            clip = v2.functional.resize(clip, self.config.crop)
        clip = self.resize(clip)
        clip = self._crop(clip, crop_index, rng)
        clip = self.normalize(self.flip(clip))
        return clip.permute(1, 0, 2, 3).contiguous(), item.label, video_index

    def _crop(self, clip: torch.Tensor, crop_index: int, rng: random.Random) -> torch.Tensor:
        size = self.config.crop
        h, w = clip.shape[-2:]
        if self.train:
            top, left = rng.randint(0, h - size), rng.randint(0, w - size)
        elif self.crops == 1:
            top, left = (h - size) // 2, (w - size) // 2
        else:  # M crops spread along the longer side (3 crops: left/centre/right)
            along = crop_index / (self.crops - 1)
            top = round((h - size) * along) if h > w else (h - size) // 2
            left = round((w - size) * along) if w >= h else (w - size) // 2
        return clip[..., top:top + size, left:left + size]


def collate_skipping(batch):
    """Stack the decodable items; count the ones that were skipped. Returns
    ``(clips, labels, video_indices, skipped)``; ``clips`` is None when all were skipped."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, None, skipped
    clips, labels, videos = zip(*good)
    return torch.stack(clips), torch.tensor(labels), torch.tensor(videos), skipped


def build(name: str, root: str | Path, *, split: int, train: bool, config: ClipConfig,
          clips: int = 1, crops: int = 1, seed: int = 0) -> tuple[VideoClipDataset, list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder")
    if name in ("ucf101", "hmdb51") and split not in (1, 2, 3):
        raise DatasetLayoutError(f"{name} has splits 1, 2 and 3, not {split}")
    items, classes = LAYOUTS[name](root, split, train)
    if not items:
        raise DatasetLayoutError(f"no videos listed for {name} ({'train' if train else 'test'}) "
                                 f"under {root}")
    return VideoClipDataset(items, config, train=train, clips=clips, crops=crops, seed=seed), classes
