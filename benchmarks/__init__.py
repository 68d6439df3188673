"""The measurement harness, in layers: thin commands on top (``run.py``, ``train.py``,
``report.py``, ``op_profile.py``, ``fiber_conv.py``), their work in ``runner/``, ``training/`` and
``reporting/``, what is measured in ``measure/``, the machine in ``machine/``, datasets in
``data/``, and the results store at the bottom (``store/``)."""

import logging

# torch.utils.benchmark imports cpp_extension, which warns at import time on a CUDA build of
# torch without a CUDA runtime; that says nothing about CPU measurements.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
