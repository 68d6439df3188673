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


@pytest.mark.perf
@pytest.mark.parametrize("step", ["infer", "train"])
def test_mfnet_on_the_kernel_against_stock_kernels_alternating(benchmark, step, capsys):
    """MF-Net on the suite's kernel and on stock kernels in alternating rounds in this process,
    as the harness's paired run times them: the machine's drift moves both alike, where the
    separate workloads above are timed minutes apart. The ratio of the medians is printed and
    kept in the benchmark's extra_info (``--benchmark-json``)."""
    import statistics
    import time

    runs = {"suite": Workload("mfnet", Setup("cpu"), CLIP),
            "stock": Workload("mfnet", Setup("cpu", fiber_kernel=False), CLIP)}
    x, y = runs["suite"].inputs(BATCH)
    if step == "infer":
        calls = {name: (lambda w=w: w.infer_step(x)) for name, w in runs.items()}
        rounds = 20
    else:
        steps = {name: w.make_train_step() for name, w in runs.items()}
        calls = {name: (lambda s=s: s(x, y)) for name, s in steps.items()}
        rounds = 6
    times = {name: [] for name in calls}

    def both():
        order = ("suite", "stock") if len(times["suite"]) % 2 == 0 else ("stock", "suite")
        for name in order:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)

    benchmark.group = f"mfnet {step} {CLIP} b{BATCH}, suite and stock kernels alternating"
    benchmark.name = f"mfnet-{step}-both"
    benchmark.pedantic(both, warmup_rounds=1, rounds=rounds)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}  # [0]: the warm-up
    ratio = median["stock"] / median["suite"]
    benchmark.extra_info.update(suite_ms=median["suite"] * 1e3, stock_ms=median["stock"] * 1e3,
                                stock_over_suite=ratio)
    with capsys.disabled():
        print(f"\nmfnet {step} {CLIP} b{BATCH}, alternating: suite {median['suite'] * 1e3:.1f} ms, "
              f"stock {median['stock'] * 1e3:.1f} ms, stock/suite {ratio:.2f}x ({rounds} rounds)")
