"""A run's settings (benchmarks/training/config.py): the defaults are the default preset's."""

from benchmarks import training


def test_the_config_defaults_are_its_default_presets():
    defaults = training.Config(model="mfnet")
    assert defaults.dataset == "motion" and defaults.preset == "motion"
    for key, value in training.PRESETS["motion"].items():
        assert getattr(defaults, key) == value, key
