"""Video and image datasets in their official layouts. Videos are decoded with PyAV straight to
uint8 frames, with frame threading; images are read by torchvision's ``ImageFolder``.

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
    imagenet     train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ImageNet-1k, Table 1)

Class indices come from one place for every split: UCF-101's classInd.txt, HMDB-51's split
files, Kinetics' train.csv, the train/ folder of a folder or ImageNet layout. A test split that
names a class the training split does not have is a ``DatasetLayoutError``, never a shifted
label.

Clip sampling follows the authors (docs/authors-release.md): T frames at a frame interval (2 for
UCF/HMDB, one of {1,2,2,3} per clip for Kinetics); training crops a random short side in
[224, 288], a random 224 crop and a flip; testing takes N clips x M crops per video, each clip
decoded once and its M crops cut from it. A video shorter than the clip is looped; one smaller
than the crop is resized up. Images: a random resized 224 crop and a flip for training; for
testing a resize to 256 and one 224 centre crop (Table 1's caption).

A video or image that cannot be decoded (corrupt, truncated, empty, or with frames larger than
``MAX_PIXELS``) is skipped with a warning and counted; it is never replaced by another item.
"""

import csv
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import av
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import Dataset

from models.errors import first_line

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".webm", ".mov"}
# Frames larger than this are refused before decoding: 4K UHD is the largest size in the
# datasets this suite reads, and a crafted 28 KB 4096x4096 file took 13 GB to decode in full.
MAX_PIXELS = 3840 * 2160


class DatasetLayoutError(ValueError):
    """A missing root or split file, or a split naming an unknown class; the message states the
    expected layout (one line)."""


@dataclass(frozen=True)
class VideoItem:
    path: Path
    label: int


def _need(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{what} not found at {path}; expected layout: {layout}")
    return path


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")  # what the layout needs of its CSVs


def _lines(path: Path) -> list[str]:
    """A list file's lines; a byte-order mark is dropped (some editors write one), and bytes that
    are not UTF-8 are a one-line error naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetLayoutError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def _kinetics_rows(path: Path) -> list[dict]:
    """An annotations CSV's rows, with the columns the layout needs, or a one-line error."""
    rows = list(csv.DictReader(_lines(path)))
    missing = [c for c in KINETICS_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise DatasetLayoutError(f"{path} lacks the column(s) {', '.join(missing)}; expected a header "
                                 f"with {','.join(KINETICS_COLUMNS)}")
    return rows


def _first_existing(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def _label(classes: list[str], name: str, where: str) -> int:
    """The index of ``name`` in the dataset's one class list, or a clear error."""
    try:
        return classes.index(name)
    except ValueError:
        raise DatasetLayoutError(f"{where} names class {name!r}, which the training split's "
                                 f"{len(classes)} classes do not include") from None


def ucf101(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    layout = ("ucfTrainTestlist/{classInd.txt,trainlist0K.txt,testlist0K.txt} and "
              "UCF-101/<Class>/<video>.avi")
    lists = _first_existing(root, "ucfTrainTestlist")
    videos = _first_existing(root, "UCF-101")
    index = _need(lists / "classInd.txt", "UCF-101 classInd.txt", layout)
    classes = []
    for number, line in enumerate(_lines(index), start=1):
        if line.strip():
            if len(line.split()) != 2:
                raise DatasetLayoutError(f"{index} line {number}: {line.strip()!r}, expected '<index> <class>'")
            classes.append(line.split()[1])
    split_file = _need(lists / f"{'trainlist' if train else 'testlist'}{split:02d}.txt",
                       f"UCF-101 split {split}", layout)
    items = []
    for line in _lines(split_file):
        if line.strip():
            relative = line.split()[0]  # testlists carry no label: the class folder names it
            items.append(VideoItem(videos / relative, _label(classes, relative.split("/")[0],
                                                             split_file.name)))
    return items, classes


def hmdb51(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    layout = "testTrainMulti_7030_splits/<class>_test_split<K>.txt and hmdb51_org/<class>/<video>.avi"
    lists = _first_existing(root, "testTrainMulti_7030_splits")
    videos = _first_existing(root, "hmdb51_org")
    files = sorted(lists.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetLayoutError(f"HMDB-51 split {split} files not found in {lists}; expected "
                                 f"layout: {layout}")
    # one file per class lists both the training and the test videos: one class list
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    wanted = "1" if train else "2"
    items = []
    for label, file in enumerate(files):
        for line in _lines(file):
            parts = line.split()
            if len(parts) == 2 and parts[1] == wanted:
                items.append(VideoItem(videos / classes[label] / parts[0], label))
    return items, classes


def kinetics400(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    del split  # Kinetics has one official train/val split
    layout = ("annotations/{train,val}.csv (label,youtube_id,time_start,time_end,split) and "
              "{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4")
    part = "train" if train else "val"
    classes = sorted({row["label"] or "" for row in _kinetics_rows(
        _need(root / "annotations" / "train.csv", "Kinetics train.csv", layout))})
    path = _need(root / "annotations" / f"{part}.csv", f"Kinetics {part}.csv", layout)
    items = []
    for number, row in enumerate(_kinetics_rows(path), start=2):
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError):
            raise DatasetLayoutError(f"{path} line {number}: time_start and time_end must be seconds, "
                                     f"not {row['time_start']!r} and {row['time_end']!r}") from None
        name = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        items.append(VideoItem(root / part / row["label"] / name, _label(classes, row["label"], f"{part}.csv")))
    return items, classes


def _class_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def _split_folders(root: Path, train: bool, layout: str) -> tuple[Path, list[str]]:
    """(the split's folder, the classes of the training folder). A test folder may lack a
    class; one with a class the training folder lacks is an error."""
    _need(root, "dataset root", layout)
    train_base = root / "train" if (root / "train").is_dir() else root
    classes = _class_folders(train_base)
    if not classes:
        raise DatasetLayoutError(f"no class folders in {train_base}; expected layout: {layout}")
    base = train_base
    if not train and train_base != root:
        base = _need(root / "val", "folder split", layout)
        for name in _class_folders(base):
            _label(classes, name, str(base))
    return base, classes


def folder(root: Path, split: int, train: bool) -> tuple[list[VideoItem], list[str]]:
    del split
    base, classes = _split_folders(root, train, "<split>/<class>/<video> or <class>/<video>")
    items = [VideoItem(path, label) for label, name in enumerate(classes) if (base / name).is_dir()
             for path in sorted((base / name).iterdir()) if path.suffix.lower() in VIDEO_SUFFIXES]
    return items, classes


LAYOUTS = {"ucf101": ucf101, "hmdb51": hmdb51, "kinetics400": kinetics400, "folder": folder}
IMAGE_LAYOUTS = ("imagenet",)
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
    max_pixels: int = MAX_PIXELS  # per decoded frame; larger files are refused as such


def clip_config(dataset: str, clip: tuple[int, int, int] | None, mean, std) -> ClipConfig:
    """How a dataset's clips are cut for a (T, H, W) clip (None: the authors' 16x224x224):
    training short sides in [crop, crop x 288/224], testing at crop x 256/224 (the authors'
    recipe, docs/authors-release.md), the dataset's frame intervals."""
    frames, crop = (clip[0], clip[1]) if clip else (16, 224)
    return ClipConfig(frames=frames, crop=crop, short_side=(crop, round(crop * 288 / 224)),
                      test_short_side=round(crop * 256 / 224), intervals=INTERVALS.get(dataset, (1,)),
                      mean=mean, std=std)


class FrameTooLarge(ValueError):
    """A video whose frames exceed the pixel cap: refused before any frame is decoded."""


def clip_window(duration: float, fps: float, frames: int, interval: int, start: float | None,
                rng: random.Random) -> tuple[float, float]:
    """(first, last) second of the clip: ``frames`` frames ``interval`` apart, starting at
    fraction ``start`` of the room left in the video (None: random)."""
    window = frames * interval / fps
    offset = max(duration - window, 0.0)
    t0 = offset * (rng.random() if start is None else start)
    return t0, min(t0 + window, duration) + 1e-3


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``short`` and the aspect kept, as torchvision's
    ``Resize(short)`` rounds it."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def decode_clip(path: Path, frames: int, interval: int, start: float | None,
                rng: random.Random, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames from ``path``, starting at fraction ``start`` of the video
    (None: random), every ``interval``-th frame, looped when the video is short.

    PyAV decodes with frame threading and only the kept frames are converted to RGB. The frames
    chosen are those PyTorchVideo's ``EncodedVideo.get_clip`` returned for the same window (its
    timestamp rounding and seek margin are kept; ``decode_clip_pytorchvideo`` is the reference,
    and a test holds the two equal), so clips are unchanged from earlier versions."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise FrameTooLarge(f"{width}x{height} frames exceed the {max_pixels:,}-pixel cap")
        stream.thread_type = "AUTO"  # frame and slice threads, same frames as one thread
        time_base, first_pts = stream.time_base, stream.start_time or 0
        fps = float(stream.average_rate or 25)
        decoded = None
        if stream.duration is not None:
            duration = float(int(stream.duration - first_pts) * time_base)
        else:  # no duration in the header: decode it all once to find the last timestamp
            decoded = _decode_between(container, stream, 0, math.inf)
            if not decoded:
                raise ValueError("no frames decoded")
            duration = float(int(decoded[-1].pts - first_pts) * time_base)
        t0, t1 = clip_window(duration, fps, frames, interval, start, rng)
        lo = math.ceil(t0 / time_base) + first_pts
        hi = math.ceil(t1 / time_base) + first_pts
        if decoded is None:
            kept = _decode_between(container, stream, lo, hi)
        else:
            kept = [f for f in decoded if lo <= f.pts < hi]
        kept = kept[::interval]
        if not kept:
            raise ValueError("no frames decoded")
        # one scaler for every frame: a fresh one per frame (to_ndarray's default) cost 3x
        # the conversion itself (1.13 vs 0.38 ms a 640x272 frame here), same pixels
        rgb = VideoReformatter()
        clip = torch.stack([torch.from_numpy(rgb.reformat(f, format="rgb24").to_ndarray())
                            for f in kept])
    return looped(clip.permute(0, 3, 1, 2), frames).contiguous()  # (T, H, W, C) -> (T, C, H, W)


def looped(clip: torch.Tensor, frames: int) -> torch.Tensor:
    """The first ``frames`` of ``clip`` (T, ...), a short video repeated until it has them."""
    if clip.shape[0] < frames:
        clip = clip.repeat((frames + clip.shape[0] - 1) // clip.shape[0], *(1,) * (clip.dim() - 1))
    return clip[:frames]


def _decode_between(container, stream, lo: int, hi: float) -> list:
    """Frames with ``lo <= pts < hi``, in timestamp order, after a seek to a keyframe before
    ``lo`` (seeking is imprecise, so the seek goes 1024 ticks earlier, as PyTorchVideo's)."""
    container.seek(int(max(lo - 1024, 0)), any_frame=False, backward=True, stream=stream)
    frames = {}
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        if frame.pts >= hi:
            break
        if frame.pts >= lo:
            frames[frame.pts] = frame
    return [frames[pts] for pts in sorted(frames)]


def decode_clip_pytorchvideo(path: Path, frames: int, interval: int, start: float | None,
                             rng: random.Random) -> torch.Tensor:
    """The earlier decoder, through PyTorchVideo's ``EncodedVideo`` (float frames): the
    baseline the loader measurement compares against, and the reference for clip equality."""
    from pytorchvideo.data.encoded_video import EncodedVideo

    video = EncodedVideo.from_path(str(path), decode_audio=False, decoder="pyav")
    try:
        fps = float(video._container.streams.video[0].average_rate or 25)
        t0, t1 = clip_window(float(video.duration), fps, frames, interval, start, rng)
        data = video.get_clip(t0, t1)["video"]
    finally:
        video.close()
    if data is None or data.numel() == 0:
        raise ValueError("no frames decoded")
    clip = data.permute(1, 0, 2, 3)[::interval]  # (C, T, H, W) -> (T, C, H, W)
    return looped(clip, frames).clamp(0, 255).to(torch.uint8)


def transforms():
    """``torchvision.transforms.v2``, imported where a dataset is built or read: importing
    torchvision took 2 s here, which every start of ``run.py`` and ``train.py`` paid."""
    from torchvision.transforms import v2

    return v2


class VideoClipDataset(Dataset):
    """Clips from decoded videos. Training: one random clip per video and index. Testing:
    ``clips`` uniformly spaced clips per video, each an item holding its ``crops`` spatial
    crops, so a clip is decoded once whatever the number of crops.

    Items are ``(clip, label, video_index)`` with clip (3, T, H, W) in training and
    (crops, 3, T, H, W) in testing, or ``None`` for a video that failed to decode
    (``collate_skipping`` drops and counts those, and flattens the crops into the batch).
    """

    def __init__(self, items: list[VideoItem], config: ClipConfig, *, train: bool,
                 clips: int = 1, crops: int = 1, seed: int = 0, baseline: bool = False):
        self.items, self.config, self.train = items, config, train
        self.clips, self.crops = (1, 1) if train else (clips, crops)
        self.seed, self.epoch = seed, 0
        # the earlier pipeline, for the loader benchmark: PyTorchVideo decoding, and training
        # clips resized whole before the crop
        self.baseline = baseline
        v2 = transforms()
        scale = [v2.RandomResize(*config.short_side)] if train else [v2.Resize(config.test_short_side)]
        self.resize = v2.Compose(scale)
        self.flip = v2.RandomHorizontalFlip() if train and config.flip else v2.Identity()
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(config.mean, config.std)])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.clips

    def __getitem__(self, index: int):
        video_index, clip_index = divmod(index, self.clips)
        item = self.items[video_index]
        # the seed of view (clip, first crop) in earlier versions, which made one item per crop
        rng = random.Random(hash((self.seed, self.epoch, index * self.crops)))
        interval = rng.choice(self.config.intervals) if self.train else self.config.intervals[0]
        start = None if self.train else (clip_index + 0.5) / self.clips
        try:
            if self.baseline:
                clip = decode_clip_pytorchvideo(item.path, self.config.frames, interval, start, rng)
            else:
                clip = decode_clip(item.path, self.config.frames, interval, start, rng,
                                   self.config.max_pixels)
        except Exception as exc:  # corrupt, truncated, empty or too large: skip and count
            log.warning("skipping %s: %s", item.path, first_line(exc))
            return None
        from torchvision import tv_tensors

        v2 = transforms()
        clip = tv_tensors.Video(clip)  # uint8: every resize runs before the float conversion
        if self.train and not self.baseline:
            clip = self.normalize(self.flip(self._resized_crop(clip, rng)))
            return clip.permute(1, 0, 2, 3).contiguous(), item.label, video_index
        if min(clip.shape[-2:]) < self.config.crop:  # smaller than the crop: resize up
            clip = v2.functional.resize(clip, self.config.crop)
        clip = self.resize(clip)
        if self.train:
            clip = self.normalize(self.flip(self._crop(clip, 0, rng)))
            return clip.permute(1, 0, 2, 3).contiguous(), item.label, video_index
        views = [self.normalize(self._crop(clip, c, rng)).permute(1, 0, 2, 3) for c in range(self.crops)]
        return torch.stack(views), item.label, video_index

    def _resized_crop(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """The training crop: a random short side in ``config.short_side`` (drawn as
        ``v2.RandomResize`` draws it) and a random square crop of it (drawn as ``_crop``
        draws it), cut from the decoded frames first and resized once. Resizing the whole
        frame and then cropping, as earlier versions did, scaled about 3x the pixels kept
        (a 640x272 video at short side 251: 590x251 resized for a 224x224 crop); the scales
        and positions are the same, pixels differ below one source pixel."""
        size = self.config.crop
        h, w = clip.shape[-2:]
        short = int(torch.randint(*self.config.short_side, ()))
        rh, rw = short_side_size(h, w, max(short, size))
        top, left = rng.randint(0, rh - size), rng.randint(0, rw - size)
        sy, sx = h / rh, w / rw  # source pixels per resized pixel
        y0, x0 = min(round(top * sy), h - 1), min(round(left * sx), w - 1)
        ch, cw = max(1, min(round(size * sy), h - y0)), max(1, min(round(size * sx), w - x0))
        return transforms().functional.resized_crop(clip, y0, x0, ch, cw, [size, size], antialias=True)

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


class ImageFolderDataset(Dataset):
    """ImageNet-style folders read by torchvision's ``ImageFolder``, with the class list given
    (the training folder's), in the video datasets' item form ``(image (3, H, W), label,
    index)``; ``None`` for an image that cannot be read."""

    def __init__(self, base: Path, classes: list[str], *, train: bool, crop: int,
                 mean, std):
        from torchvision.datasets import folder

        v2 = transforms()
        resize = round(crop * 256 / 224)  # Table 1: resize to 256, one 224 centre crop
        transform = v2.Compose(
            ([v2.RandomResizedCrop(crop), v2.RandomHorizontalFlip()] if train
             else [v2.Resize(resize), v2.CenterCrop(crop)])
            + [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
        index = {name: i for i, name in enumerate(classes)}
        samples = folder.make_dataset(str(base), index, extensions=folder.IMG_EXTENSIONS,
                                      allow_empty=True)
        self.samples, self.transform = samples, transform
        self.loader = folder.default_loader

    def set_epoch(self, epoch: int) -> None:
        del epoch  # augmentation draws from torch's generator, seeded per epoch by the trainer

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as exc:  # corrupt or truncated: skip and count
            log.warning("skipping %s: %s", path, first_line(exc))
            return None
        return self.transform(image), label, index


def imagenet(root: Path, *, train: bool, crop: int, mean, std) -> tuple[ImageFolderDataset, list[str]]:
    layout = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
    _need(root / "train", "ImageNet train/", layout)
    base, classes = _split_folders(root, train, layout)
    return ImageFolderDataset(base, classes, train=train, crop=crop, mean=mean, std=std), classes


def collate_skipping(batch):
    """Stack the decodable items; count the ones that were skipped. Returns
    ``(clips, labels, video_indices, skipped)``; ``clips`` is None when all were skipped. Test
    items holding M crops each are flattened into M clips, their label and video repeated; a
    skipped item counts once (one failed decode), whatever its crops."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, None, skipped
    clips, labels, videos = zip(*good)
    if clips[0].dim() == 5:  # (crops, 3, T, H, W) per item
        crops = clips[0].shape[0]
        return (torch.cat(clips), torch.tensor(labels).repeat_interleave(crops),
                torch.tensor(videos).repeat_interleave(crops), skipped)
    return torch.stack(clips), torch.tensor(labels), torch.tensor(videos), skipped


def build(name: str, root: str | Path, *, split: int, train: bool, config: ClipConfig,
          clips: int = 1, crops: int = 1, seed: int = 0):
    """(dataset, the dataset's class list)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder")
    if name == "imagenet":
        dataset, classes = imagenet(root, train=train, crop=config.crop, mean=config.mean,
                                    std=config.std)
        if not len(dataset):
            raise DatasetLayoutError(f"no images listed for imagenet ({'train' if train else 'val'}) "
                                     f"under {root}")
        return dataset, classes
    if name in ("ucf101", "hmdb51") and split not in (1, 2, 3):
        raise DatasetLayoutError(f"{name} has splits 1, 2 and 3, not {split}")
    items, classes = LAYOUTS[name](root, split, train)
    if not items:
        raise DatasetLayoutError(f"no videos listed for {name} ({'train' if train else 'test'}) "
                                 f"under {root}")
    return VideoClipDataset(items, config, train=train, clips=clips, crops=crops, seed=seed), classes
