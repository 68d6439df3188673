"""Hot paths for ``nox -s perf`` (pytest-benchmark): one inference and one training step of
MF-Net, Res3D and I3D at a small clip. Timings, not assertions: excluded from the tests."""

import pytest

from benchmarks.workload import Setup, Workload

CLIP = (8, 112, 112)
BATCH = 2


@pytest.fixture(scope="module", params=["mfnet", "res3d", "i3d"])
def workload(request):
    return Workload(request.param, Setup("cpu"), CLIP)


@pytest.mark.perf
def test_inference_step(benchmark, workload):
    x, _ = workload.inputs(BATCH)
    benchmark.group = f"infer {CLIP} b{BATCH}"
    benchmark.name = workload.name
    benchmark.pedantic(workload.infer_step, args=(x,), warmup_rounds=1, rounds=5)


@pytest.mark.perf
def test_training_step(benchmark, workload):
    x, y = workload.inputs(BATCH)
    step = workload.make_train_step()
    benchmark.group = f"train {CLIP} b{BATCH}"
    benchmark.name = workload.name
    benchmark.pedantic(step, args=(x, y), warmup_rounds=1, rounds=3)
