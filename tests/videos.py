"""Tiny datasets of real encoded videos, written with PyAV in the official layouts."""

from pathlib import Path

import torch

from benchmarks.data.motion import write_video


def video(path: Path, frames: int = 12, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    write_video(path, (torch.rand(frames, *size, 3, generator=g) * 255).to(torch.uint8))
    return path


def corrupt(path: Path, kind: str) -> Path:
    """``empty``: a zero-byte file; ``truncated``: a real video cut after its header;
    ``garbage``: bytes that are no video at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        video(path, frames=30)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"\x00not a video" * 20)
    return path


def ucf101(root: Path) -> Path:
    """Two classes, splits 1-3: classInd.txt, trainlist0K.txt (1-based labels), testlist0K.txt."""
    classes = ["ApplyEyeMakeup", "Basketball"]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train, test = [], []
    for label, name in enumerate(classes):
        for group in (1, 2, 3):
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            video(root / "UCF-101" / rel, seed=label * 10 + group)
            (train if group < 3 else test).append(rel)
    corrupt(root / "UCF-101" / "Basketball/v_Basketball_g04_c01.avi", "truncated")
    train.append("Basketball/v_Basketball_g04_c01.avi")
    for split in (1, 2, 3):  # the official three splits (the same videos here)
        (lists / f"trainlist0{split}.txt").write_text(
            "".join(f"{r} {classes.index(r.split('/')[0]) + 1}\n" for r in train))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{r}\n" for r in test))
    return root


def hmdb51(root: Path) -> Path:
    classes = ["brush_hair", "cartwheel"]
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for label, name in enumerate(classes):
        lines = []
        for i, role in enumerate((1, 1, 2, 0)):
            file = f"{name}_{i}.avi"
            video(root / "hmdb51_org" / name / file, seed=label * 10 + i)
            lines.append(f"{file} {role} ")
        if label == 1:
            corrupt(root / "hmdb51_org" / name / "empty.avi", "empty")
            lines.append("empty.avi 2 ")
        (lists / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    return root


def kinetics400(root: Path) -> Path:
    classes = ["abseiling", "zumba"]
    (root / "annotations").mkdir(parents=True)
    for part, count in (("train", 2), ("val", 1)):
        rows = ["label,youtube_id,time_start,time_end,split"]
        for label, name in enumerate(classes):
            for i in range(count):
                yid = f"{name[:3]}{part}{i:03d}x"
                rows.append(f"{name},{yid},{10 * i},{10 * i + 10},{part}")
                video(root / part / name / f"{yid}_{10 * i:06d}_{10 * i + 10:06d}.mp4",
                      seed=label * 7 + i)
        if part == "val":
            rows.append("zumba,garbage0001,0,10,val")
            corrupt(root / "val" / "zumba" / "garbage0001_000000_000010.mp4", "garbage")
        (root / "annotations" / f"{part}.csv").write_text("\n".join(rows) + "\n")
    return root


def folder(root: Path) -> Path:
    for part, count in (("train", 3), ("val", 1)):
        for label, name in enumerate(("left", "right")):
            for i in range(count):
                video(root / part / name / f"{i}.mp4", seed=label * 5 + i,
                      size=(20, 24) if i == 0 else (40, 48), frames=5 if i == 0 else 12)
    corrupt(root / "train" / "left" / "empty.mp4", "empty")
    return root


def imagenet(root: Path) -> Path:
    """ImageNet-1k's folders: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, two classes, one
    corrupt image in val."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for part, count in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(40, 52, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    (root / "val" / "n01443537" / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    return root
