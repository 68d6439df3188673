"""Hot paths for ``nox -s perf`` (pytest-benchmark): one inference and one training step of
MF-Net (its default channels-last path and the plain reference path), Res3D and I3D at a small
clip, under the harness's allocator setting. Timings, not assertions: excluded from the tests."""

import pytest

from benchmarks import runtime
from benchmarks.workload import Setup, Workload

CLIP = (8, 112, 112)
BATCH = 2
WORKLOADS = {"mfnet": {}, "mfnet-reference": {"channels_last": False}, "res3d": {}, "i3d": {}}

runtime.keep_freed_memory()


@pytest.fixture(scope="module", params=list(WORKLOADS))
def workload(request):
    name = request.param.removesuffix("-reference")
    workload = Workload(name, Setup("cpu"), CLIP, **WORKLOADS[request.param])
    workload.label = request.param
    return workload


@pytest.mark.perf
def test_inference_step(benchmark, workload):
    x, _ = workload.inputs(BATCH)
    benchmark.group = f"infer {CLIP} b{BATCH}"
    benchmark.name = workload.label
    benchmark.pedantic(workload.infer_step, args=(x,), warmup_rounds=1, rounds=5)


@pytest.mark.perf
def test_training_step(benchmark, workload):
    x, y = workload.inputs(BATCH)
    step = workload.make_train_step()
    benchmark.group = f"train {CLIP} b{BATCH}"
    benchmark.name = workload.label
    benchmark.pedantic(step, args=(x, y), warmup_rounds=1, rounds=3)
