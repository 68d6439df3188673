"""Shared by every test: CUDA tests skipped without a GPU, and the kernel library built once,
before any test, so that no test's subprocess prints the first build's notice among the lines it
checks or spends its timeout on it."""

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="pytorchvideo")


def pytest_addoption(parser):
    # nox -s perf -- --dtype bf16: the hot paths under bf16 autocast (tests/perf)
    parser.addoption("--dtype", default="fp32", choices=("fp32", "bf16"),
                     help="the dtype the perf session times (bf16: by autocast)")


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
