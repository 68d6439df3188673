"""Hot paths for ``nox -s perf`` (pytest-benchmark): one inference and one training step of
MF-Net (its default path, with its fiber convs on the suite's kernel; the same on stock kernels,
as footnote 5 found it; the plain reference path), Res3D and I3D at a small clip, under the
harness's allocator setting; and MF-Net on the kernel against stock kernels in alternating
rounds, at that clip and at the paper's input and the harness's throughput batch (with Res3D,
for the report's GMAC/s ratio). ``nox -s perf -- --dtype bf16`` times the same under bf16
autocast. Timings, not assertions: excluded from the tests."""

import dataclasses
import time

import pytest

from benchmarks.machine import runtime
from benchmarks.measure.workload import Setup, Workload

CLIP = (8, 112, 112)
BATCH = 2
# label: (model, setup, model arguments)
WORKLOADS = {"mfnet": ("mfnet", Setup("cpu"), {}),
             "mfnet-stock-kernels": ("mfnet", Setup("cpu", fiber_kernel=False), {}),
             "mfnet-reference": ("mfnet", Setup("cpu", fiber_kernel=False), {"channels_last": False}),
             "res3d": ("res3d", Setup("cpu"), {}), "i3d": ("i3d", Setup("cpu"), {})}

runtime.keep_freed_memory()


@pytest.fixture(scope="module")
def dtype(pytestconfig) -> str:
    return pytestconfig.getoption("--dtype")


@pytest.fixture(scope="module", params=list(WORKLOADS))
def workload(request, dtype):
    name, setup, kwargs = WORKLOADS[request.param]
    workload = Workload(name, dataclasses.replace(setup, dtype=dtype), CLIP, **kwargs)
    workload.label = request.param
    return workload


@pytest.mark.perf
def test_inference_step(benchmark, workload):
    x, _ = workload.inputs(BATCH)
    benchmark.group = f"infer {CLIP} b{BATCH} {workload.setup.dtype}"
    benchmark.name = workload.label
    benchmark.pedantic(workload.infer_step, args=(x,), warmup_rounds=1, rounds=5)


@pytest.mark.perf
def test_training_step(benchmark, workload):
    x, y = workload.inputs(BATCH)
    step = workload.make_train_step()
    benchmark.group = f"train {CLIP} b{BATCH} {workload.setup.dtype}"
    benchmark.name = workload.label
    benchmark.pedantic(step, args=(x, y), warmup_rounds=1, rounds=3)


def alternating(runs: dict[str, Workload], step: str, batch: int):
    """(one round: each workload's inference or training step once, in the opposite order from
    the round before, so a drift of the machine moves all alike; each one's times, by name)."""
    inputs = {name: w.inputs(batch) for name, w in runs.items()}
    if step == "infer":
        calls = {name: (lambda w=w, x=inputs[name][0]: w.infer_step(x)) for name, w in runs.items()}
    else:
        steps = {name: w.make_train_step() for name, w in runs.items()}
        calls = {name: (lambda s=s, xy=inputs[name]: s(*xy)) for name, s in steps.items()}
    times = {name: [] for name in calls}

    def each():
        order = list(calls) if len(next(iter(times.values()))) % 2 == 0 else list(calls)[::-1]
        for name in order:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)

    return each, times


@pytest.mark.perf
@pytest.mark.parametrize("step, clip, batch", [
    ("infer", CLIP, BATCH), ("train", CLIP, BATCH),
    # the acceptance figures' conditions: MF-Net's paper input at the harness's throughput batch,
    # with Res3D at its own (spec) input in the same rounds for the GMAC/s ratio
    ("infer", None, 4), ("train", None, 4)])
def test_mfnet_on_the_kernel_against_stock_kernels_alternating(benchmark, step, clip, batch, dtype, capsys):
    """MF-Net on the suite's kernel and on stock kernels in alternating rounds in this process,
    as the harness's paired run times them: the machine's drift moves both alike, where the
    separate workloads above are timed minutes apart. The ratio of the medians is printed and
    kept in the benchmark's extra_info (``--benchmark-json``); at the paper's input (``clip``
    None), so is MF-Net's achieved GMAC/s against Res3D's, as the report puts them."""
    import statistics

    from benchmarks.measure.cost import count_macs
    from benchmarks.measure.speed import TRAIN_MACS_FACTOR

    runs = {"suite": Workload("mfnet", Setup("cpu", dtype=dtype), clip),
            "stock": Workload("mfnet", Setup("cpu", dtype=dtype, fiber_kernel=False), clip)}
    if clip is None:
        runs["res3d"] = Workload("res3d", Setup("cpu", dtype=dtype))
    each, times = alternating(runs, step, batch)
    rounds = (20 if clip else 6) if step == "infer" else (6 if clip else 3)
    where = f"{clip or 'paper input'} b{batch} {dtype}"
    benchmark.group = f"mfnet {step} {where}, suite and stock kernels alternating"
    benchmark.name = f"mfnet-{step}-both"
    benchmark.pedantic(each, warmup_rounds=1, rounds=rounds)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}  # [0]: the warm-up
    ratio = median["stock"] / median["suite"]
    benchmark.extra_info.update(suite_ms=median["suite"] * 1e3, stock_ms=median["stock"] * 1e3,
                                stock_over_suite=ratio)
    line = (f"\nmfnet {step} {where}, alternating: suite {median['suite'] * 1e3:.1f} ms, "
            f"stock {median['stock'] * 1e3:.1f} ms, stock/suite {ratio:.2f}x ({rounds} rounds)")
    if clip is None:  # achieved GMAC/s, as the report's wall-clock table has them
        factor = TRAIN_MACS_FACTOR if step == "train" else 1
        rate = {name: factor * count_macs(runs[name].name).gmacs * batch / median[name]
                for name in ("suite", "res3d")}
        against = rate["suite"] / rate["res3d"]
        benchmark.extra_info.update(mfnet_gmacs=rate["suite"], res3d_gmacs=rate["res3d"],
                                    mfnet_over_res3d=against)
        line += (f"; MF-Net on the kernel {rate['suite']:.0f} GMAC/s against Res3D's "
                 f"{rate['res3d']:.0f}: {against:.2f}")
    with capsys.disabled():
        print(line)


@pytest.mark.perf
@pytest.mark.parametrize("step", ["infer", "train"])
def test_mfnet_in_bf16_against_fp32_on_the_kernels_alternating(benchmark, step, capsys):
    """MF-Net on the suite's kernels in bf16 (autocast) and in fp32, and on stock kernels in
    bf16, in alternating rounds in this process, at the paper's input and the harness's
    throughput batch: bf16's gain over the fp32 kernels and over PyTorch's own bf16, measured as
    one. Printed and kept in extra_info; where the CPU has no native bf16 the gain is the
    fallback's (the units on the fp32 kernels)."""
    import statistics

    batch = 4
    runs = {"suite bf16": Workload("mfnet", Setup("cpu", dtype="bf16")),
            "suite fp32": Workload("mfnet", Setup("cpu")),
            "stock bf16": Workload("mfnet", Setup("cpu", dtype="bf16", fiber_kernel=False))}
    each, times = alternating(runs, step, batch)
    rounds = 6 if step == "infer" else 3
    benchmark.group = f"mfnet {step} paper input b{batch}, bf16 and fp32 alternating"
    benchmark.name = f"mfnet-{step}-bf16-fp32"
    benchmark.pedantic(each, warmup_rounds=1, rounds=rounds)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}  # [0]: the warm-up
    over_fp32, over_stock = (median[k] / median["suite bf16"] for k in ("suite fp32", "stock bf16"))
    benchmark.extra_info.update({f"{k.replace(' ', '_')}_ms": v * 1e3 for k, v in median.items()}
                                | {"bf16_over_fp32_kernels": over_fp32, "bf16_over_stock_bf16": over_stock})
    with capsys.disabled():
        print(f"\nmfnet {step} paper input b{batch}, alternating: "
              + ", ".join(f"{k} {v * 1e3:.0f} ms ({batch / v:.2f} clips/s)" for k, v in median.items())
              + f"; suite bf16 is {over_fp32:.2f}x the fp32 kernels and {over_stock:.2f}x stock bf16 ({rounds} rounds)")
