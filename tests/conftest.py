"""Shared by every test: CUDA tests skipped without a GPU, and the kernel library built once,
before any test, so that no test's subprocess prints the first build's notice among the lines it
checks or spends its timeout on it."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="pytorchvideo")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def kernels_built():
    from models.kernels import build

    build.extension()
