import pytest

from models.kernels import build, paths, state


@pytest.fixture(scope="package", autouse=True)
def built():
    if build.extension() is None or not paths.channels_last_path():
        pytest.skip(f"no channels-last kernel here: {state.status()}")


@pytest.fixture(params=["avx2", "avx512-emulated", "avx512"])
def each_path(request, monkeypatch):
    """Each channels-last path in turn: AVX2 (8 lanes), the AVX-512 blocking (16) on pairs of
    AVX2 registers, and the AVX-512 build itself where the CPU has it."""
    if build.extension().best_path(request.param) != request.param:
        pytest.skip(f"this CPU cannot run {request.param}")
    monkeypatch.setenv(paths.SWITCH, request.param)
    assert paths.path() == request.param
    return request.param
