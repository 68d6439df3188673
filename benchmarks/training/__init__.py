"""Training and evaluation of any registered model on a video or image dataset: config and
presets (``config.py``), the command line (``options.py``), data, optimiser and schedule, mixed
precision, DistributedDataParallel, the epoch loop and multi-view evaluation, resume state, and
one run from start to finish (``run.py``)."""

from benchmarks.training.config import PRESETS, Config, SettingsError, protocol
from benchmarks.training.probe import probe_rate
from benchmarks.training.run import train, train_all

__all__ = ["PRESETS", "Config", "SettingsError", "probe_rate", "protocol", "train", "train_all"]
