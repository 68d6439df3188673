"""The epoch loop (benchmarks/training/loop.py): the progress bar reports clips per second."""

from benchmarks.training import loop


def test_the_epoch_progress_bar_reports_clips_per_second():
    bar = loop.EpochProgress(enabled=True)
    with bar.epoch("epoch 1/1", total=2) as advance:
        advance(4)
        advance(4)
        task = bar.bar.tasks[0]
        assert task.completed == 2 and task.fields["rate"].endswith("clips/s")
        assert advance.clips == 8
