"""The datasets in their official layouts, from generated video files, with bad files."""

import logging
import random

import pytest
import torch

from benchmarks.data import datasets
from benchmarks.data.datasets import ClipConfig, DatasetLayoutError, collate_skipping
from benchmarks.data.motion import write_video
from tests import videos

CONFIG = ClipConfig(frames=8, crop=32, short_side=(32, 40), test_short_side=36, intervals=(2,))
EXPECTED = {  # (train videos, test videos, skipped in train, skipped in test)
    "ucf101": (5, 2, 1, 0), "hmdb51": (4, 3, 0, 1), "kinetics400": (4, 3, 0, 1), "folder": (7, 2, 1, 0),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def layout(request, tmp_path_factory):
    root = getattr(videos, request.param)(tmp_path_factory.mktemp(request.param))
    return request.param, root


def test_reads_the_official_layout_and_counts_bad_videos(layout, caplog):
    name, root = layout
    n_train, n_test, bad_train, bad_test = EXPECTED[name]
    train, classes = datasets.build(name, root, split=1, train=True, config=CONFIG)
    test, _ = datasets.build(name, root, split=1, train=False, config=CONFIG, clips=2, crops=3)
    assert len(classes) == 2 and len(train) == n_train and len(test) == n_test * 2  # 2 clips each
    with caplog.at_level(logging.WARNING):
        clips, labels, _, skipped = collate_skipping([train[i] for i in range(len(train))])
    assert skipped == bad_train and clips.shape == (n_train - bad_train, 3, 8, 32, 32)
    assert set(labels.tolist()) <= {0, 1}
    assert ("skipping" in caplog.text) == (bad_train > 0)
    # a test item is one decoded clip holding its 3 crops; the batch flattens them
    clips, _, video_index, skipped = collate_skipping([test[i] for i in range(len(test))])
    assert skipped == bad_test * 2 and clips.shape[0] == (n_test - bad_test) * 6
    assert video_index.tolist() == sorted(video_index.tolist())
    assert torch.isfinite(clips).all()


def test_short_and_small_videos_are_looped_and_resized(tmp_path):
    path = videos.video(tmp_path / "tiny.mp4", frames=3, size=(12, 16))
    clip = datasets.decode_clip(path, frames=8, interval=2, start=0.0, rng=__import__("random").Random(0))
    assert clip.shape[0] == 8  # 3 frames at interval 2 -> 2 frames, looped to 8
    ds = datasets.VideoClipDataset([datasets.VideoItem(path, 0)], CONFIG, train=True)
    assert ds[0][0].shape == (3, 8, 32, 32)


def test_test_views_are_deterministic_and_distinct(tmp_path):
    root = videos.folder(tmp_path)
    test, _ = datasets.build("folder", root, split=1, train=False, config=CONFIG, clips=2, crops=3)
    a, b = test[0][0], test[0][0]
    assert a.shape == (3, 3, 8, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[0], a[2])  # another crop of the same clip
    long = datasets.VideoClipDataset([datasets.VideoItem(videos.video(tmp_path / "long.mp4", frames=40), 0)],
                                     CONFIG, train=False, clips=2, crops=1)
    assert not torch.equal(long[0][0], long[1][0])  # another clip of the same video


@pytest.mark.parametrize("name, message", [
    ("ucf101", "classInd.txt not found"), ("hmdb51", "split 1 files not found"),
    ("kinetics400", "train.csv not found"), ("folder", "no class folders"),
])
def test_a_missing_split_file_states_the_expected_layout(tmp_path, name, message):
    with pytest.raises(DatasetLayoutError, match=message) as err:
        datasets.build(name, tmp_path, split=1, train=True, config=CONFIG)
    assert "expected layout" in str(err.value)


def test_a_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        datasets.build("ucf101", tmp_path / "nope", split=1, train=True, config=CONFIG)
    with pytest.raises(DatasetLayoutError, match="splits 1, 2 and 3"):
        datasets.build("ucf101", tmp_path, split=4, train=True, config=CONFIG)


@pytest.mark.parametrize("name, frames, size", [("a.mp4", 40, (40, 48)), ("b.avi", 7, (30, 32)),
                                                ("c.mkv", 25, (36, 36))])
def test_clips_equal_the_earlier_pytorchvideo_decoder_on_the_same_video_and_seed(tmp_path, name, frames,
                                                                                 size):
    path = videos.video(tmp_path / name, frames=frames, size=size)
    for start in (None, 0.0, 0.3, 0.99):
        for interval in (1, 2, 3):
            ours = datasets.decode_clip(path, 8, interval, start, random.Random(5))
            reference = datasets.decode_clip_pytorchvideo(path, 8, interval, start, random.Random(5))
            assert ours.dtype == torch.uint8 and torch.equal(ours, reference), (start, interval)


@pytest.mark.slow
def test_frames_over_the_pixel_cap_are_refused_and_good_videos_after_still_load(tmp_path, caplog):
    huge = videos.video(tmp_path / "huge.mp4", frames=1, size=(4096, 4096))  # 16.8 MP, tiny file
    good = videos.video(tmp_path / "good.mp4")
    with pytest.raises(datasets.FrameTooLarge, match="4096x4096 frames exceed"):
        datasets.decode_clip(huge, 8, 2, 0.0, random.Random(0))
    ds = datasets.VideoClipDataset([datasets.VideoItem(huge, 0), datasets.VideoItem(good, 1)], CONFIG,
                                   train=True)
    with caplog.at_level(logging.WARNING):
        clips, labels, _, skipped = collate_skipping([ds[0], ds[1]])
    assert skipped == 1 and labels.tolist() == [1] and "pixel cap" in caplog.text


def test_training_crops_cut_before_resizing_match_resizing_whole_frames_first(tmp_path):
    # a smooth video: the two orders differ below one source pixel, so only slightly
    y, x = torch.meshgrid(torch.linspace(0, 1, 72), torch.linspace(0, 1, 120), indexing="ij")
    frames = torch.stack([torch.stack([(x + t / 60) / 2, y, (x + y) / 2], -1) for t in range(30)])
    path = tmp_path / "smooth.mp4"
    write_video(path, (frames * 255).to(torch.uint8))
    config = ClipConfig(frames=8, crop=48, short_side=(48, 62), test_short_side=55, intervals=(2,))
    ours = datasets.VideoClipDataset([datasets.VideoItem(path, 0)], config, train=True)
    earlier = datasets.VideoClipDataset([datasets.VideoItem(path, 0)], config, train=True, baseline=True)
    for epoch in range(4):
        ours.set_epoch(epoch)
        earlier.set_epoch(epoch)
        torch.manual_seed(epoch)
        a = ours[0][0]
        torch.manual_seed(epoch)
        b = earlier[0][0]
        assert a.shape == b.shape == (3, 8, 48, 48)
        assert (a - b).abs().mean() < 0.05  # normalised units: the clips are ~1 in magnitude


def _edited(path, edit):
    path.write_bytes(edit(path.read_bytes()))


@pytest.mark.parametrize("name, file, edit, message", [
    ("ucf101", "ucfTrainTestlist/classInd.txt", lambda b: b + b"3\n",
     r"classInd.txt line 3: '3', expected '<index> <class>'"),
    ("ucf101", "ucfTrainTestlist/trainlist01.txt", lambda b: b[:5] + b"\xff" + b[6:], r"is not UTF-8 text"),
    ("kinetics400", "annotations/train.csv", lambda b: b.replace(b"label,", b"class,", 1),
     r"train.csv lacks the column\(s\) label"),
    ("kinetics400", "annotations/val.csv", lambda b: b.replace(b"\n", b"\nx,abc,noon,later,val\n", 1),
     r"val.csv line 2: time_start and time_end must be seconds"),
])
def test_a_damaged_list_file_is_one_error_naming_the_file_and_line(tmp_path, name, file, edit, message):
    root = getattr(videos, name)(tmp_path / name)
    _edited(root / file, edit)
    with pytest.raises(DatasetLayoutError, match=message):
        for train in (True, False):
            datasets.build(name, root, split=1, train=train, config=CONFIG)


@pytest.mark.parametrize("file", ["classInd.txt", "trainlist01.txt", "testlist01.txt"])
def test_a_byte_order_mark_is_read_past_in_every_list_file(tmp_path, file):
    root = videos.ucf101(tmp_path / "ucf")
    plain = [datasets.build("ucf101", root, split=1, train=t, config=CONFIG)[0].items for t in (True, False)]
    _edited(root / "ucfTrainTestlist" / file, lambda b: b"\xef\xbb\xbf" + b)
    marked = [datasets.build("ucf101", root, split=1, train=t, config=CONFIG)[0].items for t in (True, False)]
    assert marked == plain
