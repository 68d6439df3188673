"""Hot paths for ``nox -s perf`` (pytest-benchmark): one inference and one training step of
MF-Net (its default path, with its fiber convs on the suite's kernel; the same on stock kernels,
as footnote 5 found it; the plain reference path), Res3D and I3D at a small clip, under the
harness's allocator setting. Timings, not assertions: excluded from the tests."""

import pytest

from benchmarks import runtime
from benchmarks.workload import Setup, Workload

CLIP = (8, 112, 112)
BATCH = 2
# label: (model, setup, model arguments)
WORKLOADS = {"mfnet": ("mfnet", Setup("cpu"), {}),
             "mfnet-stock-kernels": ("mfnet", Setup("cpu", fiber_kernel=False), {}),
             "mfnet-reference": ("mfnet", Setup("cpu", fiber_kernel=False), {"channels_last": False}),
             "res3d": ("res3d", Setup("cpu"), {}), "i3d": ("i3d", Setup("cpu"), {})}

runtime.keep_freed_memory()


@pytest.fixture(scope="module", params=list(WORKLOADS))
def workload(request):
    name, setup, kwargs = WORKLOADS[request.param]
    workload = Workload(name, setup, CLIP, **kwargs)
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
