"""The measurement harness: ``run.py`` is the CLI, one module per measurement."""

import logging

# torch.utils.benchmark imports cpp_extension, which warns at import time on a CUDA build of
# torch without a CUDA runtime; that says nothing about CPU measurements.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
