"""One model's measurement in a run: cost, memory, speed, the loader or motion-benchmark
accuracy, as rows. A failure is an error row and the sweep goes on; out-of-memory on CUDA halves
the batch and says so; on a CPU the memory guard skips a step that would not fit, with an error
row naming both figures."""

import dataclasses
from pathlib import Path

import torch

from benchmarks import runtimes
from benchmarks.machine import disturbance, runtime
from benchmarks.measure import cost, loader, memory, path, peak, speed
from benchmarks.measure.workload import Setup, Workload
from benchmarks.runner import accuracy, plan
from benchmarks.runner.options import MOTION_CLIP, RunOptions, check_clip_fits
from benchmarks.runtimes import check, export
from benchmarks.runtimes import workload as runtime_workload
from benchmarks.store import Measurement, ResultsStore, RunConditions
from models.errors import first_line


@dataclasses.dataclass
class Context:
    """What one model's measurement needs beside the options: the run's conditions (and those
    a paired run times against them), the machine's peak and watch, and the probed rates."""

    conditions: RunConditions
    stock: RunConditions  # the stock kernels' condition, timed beside the run's for a paired model
    paired_models: tuple[str, ...]
    setup: Setup
    store: ResultsStore | None = None  # where a path probe's stored choice is looked up
    peak: float | None = None
    watch: disturbance.MachineWatch | None = None
    probes: accuracy.Probes = dataclasses.field(default_factory=accuracy.Probes)

    def also(self, name: str) -> list[RunConditions]:
        """The conditions ``name``'s speed is timed under beside the run's (paired: stock)."""
        return [self.stock] if name in self.paired_models and self.stock != self.conditions else []


def measure_cost(name: str, clip, label: str, quick: bool) -> list[Measurement]:
    c = cost.count_macs(name, clip)
    policy = "conv+linear, FlopCounterMode on meta"
    rows = [Measurement(name, "cost", "params", c.params, "count", clip=label),
            Measurement(name, "cost", "gmacs", c.gmacs, "GMAC", clip=label, note=policy),
            Measurement(name, "cost", "gflops", c.gflops, "GFLOP", clip=label, note=policy)]
    rows += [Measurement(name, "cost", f"gmacs_{kind}", macs / 1e9, "GMAC", clip=label,
                         note="FlopCounterMode split by leaf module type")
             for kind, macs in c.by_layer_type.items()]
    if c.gmacs <= (40 if quick else 160):  # fvcore runs real tensors: keep it affordable
        fv = cost.count_macs_fvcore(name, clip)
        rows += [Measurement(name, "cost", "gmacs_fvcore", fv["conv_linear"] / 1e9, "GMAC", clip=label,
                             note="conv+linear, fvcore on real tensors"),
                 Measurement(name, "cost", "gmacs_fvcore_all", fv["all"] / 1e9, "GMAC", clip=label,
                             note="fvcore total, with BatchNorm and pooling")]
    return rows


def measure_one(name: str, measurement: str, options: RunOptions, label: str, context: Context) -> list[Measurement]:
    if measurement == "cost":
        return measure_cost(name, options.clip, label, options.quick)
    if measurement == "accuracy":
        clip = options.clip or MOTION_CLIP
        check_clip_fits(name, clip)
        accuracy.measure_accuracy(name, options, context.probes, context.conditions)
        # the cost at the benchmark's clip, so the report can set accuracy against it
        label = "x".join(map(str, clip))
        return [row for row in measure_cost(name, clip, label, quick=True) if row.metric in ("params", "gmacs")]
    if measurement == "data":
        return loader.measure_data(name, options.dataset, options.root, options.clip, split=options.split,
                                   workers=options.workers, setup=context.setup, batch=options.batch_size,
                                   items=4 if options.quick else 8, min_run_time=0.1 if options.quick else 1.0)
    rows, used = (measure_memory if measurement == "memory" else measure_speed)(name, options, label, context)
    if used != options.batch_size:
        for row in rows:
            row.note = (row.note + f"; OOM at batch {options.batch_size}, ran at {used}").lstrip("; ")
    return rows


def measure_memory(name: str, options: RunOptions, label: str, context: Context) -> tuple[list[Measurement], int]:
    short = (options.device == "cpu" and not options.quick
             and memory_short(name, options, "train", fresh_process=True))
    rows, used = with_oom_retry(
        lambda b: memory.measure_memory(name, context.setup, options.clip, label, b, options.quick,
                                        rss_probe=not short),
        options.batch_size, options.device)
    if short:
        rows.append(short_row(name, "memory", "peak_rss_mb_train", label, options.batch_size, short))
    return rows, used


def measure_runtime_speed(name: str, options: RunOptions, label: str,
                          context: Context) -> tuple[list[Measurement], int]:
    """Latency and inference throughput on a runtime other than eager (and training under
    ``compile``), after its outputs on a fixed input are checked against eager's: a runtime that
    disagrees is an error row, not a speed. Inside the machine watch, as eager."""
    if options.device == "cpu" and (short := memory_short(name, options, "infer")):
        raise memory.MemoryShort(short)
    probed, setup = [], context.setup
    if options.runtime == "compile":
        setup, probed = chosen_path(name, options, label, context)
        workload = Workload(name, setup, options.clip)
        reference, got = runtime_workload.compiled_outputs(workload)
    else:
        cache = Path(options.results) / export.CACHE
        workload = runtime_workload.RuntimeWorkload(name, context.setup, options.clip, options.runtime, cache)
        reference, got = workload.reference(), workload.outputs()
    rows, refused = check.check_rows(name, options.runtime, options.dtype, label, reference, got)
    on_path(rows, setup, options)
    rows = probed + rows
    if refused:
        error = Measurement(name, "speed", "error", None, "", clip=label, status="error", error=refused)
        return [*rows, error], options.batch_size
    train_short = options.device == "cpu" and memory_short(name, options, "train")
    trains = options.runtime in runtimes.TRAINS and not train_short
    macs = cost.count_macs(name, options.clip).macs

    def timing(batch):
        return speed.measure_speed([workload], label, batch, macs, context.peak, 0.1 if options.quick else 1.0,
                                   warmup=0 if options.quick else 1, train=trains)[0]

    watched = (lambda b: context.watch.timed(lambda: timing(b))) if context.watch else timing
    timed, used = with_oom_retry(watched, options.batch_size, options.device)
    settings = workload.settings() if hasattr(workload, "settings") else {}
    for row in timed:
        if settings and row.metric in ("latency_ms", "infer_clips_per_s"):
            engine = settings.get(str(row.batch_size), {})
            row.note = "; ".join(filter(None, [row.note, ", ".join(f"{k}={v}" for k, v in engine.items())]))
    on_path(timed, setup, options)
    return rows + timed, used


def measure_speed(name: str, options: RunOptions, label: str, context: Context) -> tuple[list[Measurement], int]:
    """Latency, inference and training throughput, under the run's kernels and, in a paired
    run, under the other's too, timed in alternating rounds; inside the machine watch. On a
    runtime other than eager: ``measure_runtime_speed``."""
    if options.runtime != "eager":
        return measure_runtime_speed(name, options, label, context)
    cpu = options.device == "cpu"
    if cpu and (short := memory_short(name, options, "infer")):
        raise memory.MemoryShort(short)
    train_short = cpu and memory_short(name, options, "train")
    macs = cost.count_macs(name, options.clip).macs
    setup, probed = chosen_path(name, options, label, context)
    workloads = [Workload(name, setup, options.clip)]
    also = context.also(name)
    workloads += [Workload(name, dataclasses.replace(setup, fiber_kernel=c.kernels == "suite"),
                           options.clip) for c in also]

    def timing(batch):
        per_workload = speed.measure_speed(workloads, label, batch, macs, context.peak,
                                           0.1 if options.quick else 1.0, warmup=0 if options.quick else 1,
                                           train=not train_short)
        for rows_, conditions in zip(per_workload[1:], also):
            for row in rows_:
                row.kernels = conditions.kernels
        return [row for rows_ in per_workload for row in rows_]

    watched = (lambda b: context.watch.timed(lambda: timing(b))) if context.watch else timing
    rows, used = with_oom_retry(watched, options.batch_size, options.device)
    if train_short:
        short = short_row(name, "speed", "train_clips_per_s", label, options.batch_size, train_short)
        rows += [short] + [dataclasses.replace(short, kernels=c.kernels) for c in also]
    on_path(rows, setup, options)
    return probed + rows, used


def chosen_path(name: str, options: RunOptions, label: str, context: Context) -> tuple[Setup, list[Measurement]]:
    """The setup ``name``'s speed is timed under, and the path probe's rows: the run's layout and
    kernels, or with ``--layout best`` the fastest path (``path.py``) as a probe stored under this
    machine, dtype and input found it (``plan.stored_choice``; ``--force`` probes again), else as
    a probe now finds it. The paired stock kernels run in the same layout."""
    if options.layout != "best":
        return context.setup, []
    candidates = plan.kernel_candidates(name, options)
    choice = None if context.store is None else plan.stored_choice(context.store, context.conditions, name,
                                                                     label, options)
    rows = []
    if choice is None:
        def probe(batch):
            return path.probe(name, context.setup, options.clip, batch, 0.05 if options.quick else 0.5,
                              candidates, min_steps=1 if options.quick else 2)

        (choice, rows), _ = with_oom_retry(probe, options.batch_size, options.device)
    return dataclasses.replace(context.setup, channels_last=choice.channels_last, fiber_kernel=choice.suite), rows


def on_path(rows: list[Measurement], setup: Setup, options: RunOptions) -> None:
    """Each row of the run's own workload says the path it ran: its layout, and its kernels
    where the probe chose others than the run's (a paired row keeps its own)."""
    if options.layout != "best":
        return
    for row in rows:
        row.channels_last = setup.channels_last
        if not row.kernels and setup.fiber_kernel != options.suite_kernels:
            row.kernels = "suite" if setup.fiber_kernel else "stock"


def with_oom_retry(measure, batch: int, device: str):
    """On CUDA out-of-memory, halve the batch and try again; return (rows, batch used)."""
    while True:
        try:
            return measure(batch), batch
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch == 1 or device != "cuda":
                raise
            batch //= 2


def memory_short(name: str, options: RunOptions, phase: str, fresh_process: bool = False) -> str:
    """Why a CPU step of ``name`` would not fit in the memory left ("" if it fits): the memory
    guard, so a measurement is skipped with an error row rather than killed by the kernel."""
    return memory.shortfall(name, options.clip, options.batch_size, phase, options.dtype, fresh_process)


def short_row(name, measurement, metric, label, batch, why) -> Measurement:
    return Measurement(name, measurement, metric, None, "", "train", batch, label, status="error",
                       error=f"MemoryShort: skipped, {why}")


def failure_text(exc: BaseException) -> str:
    """An exception's first line; for a ``MemoryError``, which says nothing, what the memory
    guard saw (a process limit, a cgroup or MemAvailable)."""
    if isinstance(exc, MemoryError):
        room, source = memory.available_bytes()
        left = "unknown" if room is None else f"{room / 2**30:.1f} GB"
        return first_line(exc, "") or f"out of memory ({left} available by {source})"
    return first_line(exc, "")


def measure_isolated(name: str, measurement: str, options: RunOptions, label: str, context: Context,
                     console) -> tuple[list[Measurement], bool]:
    """(rows, failed): a failure becomes one error row and the sweep carries on."""
    try:
        rows = measure_one(name, measurement, options, label, context)
    except Exception as exc:
        rows = [Measurement(name, measurement, "error", None, "", clip=label, status="error",
                            error=f"{type(exc).__name__}: {failure_text(exc)}")]
        console.print(f"[red]{name} {measurement}: {rows[0].error}")
        return rows, True
    finally:
        runtime.give_back_memory()  # what this model freed is not held while the next runs
    for row in rows:
        if row.status == "error":
            console.print(f"[red]{name} {row.metric}: {row.error}")
        elif row.note.startswith(("noisy", disturbance.MARK)) and row.metric not in ("gmacs_per_s", "peak_fraction"):
            kernels = f", {row.kernels} kernels" if row.kernels else ""
            console.print(f"[yellow]warning: {name} {row.metric} (batch {row.batch_size}{kernels}) is {row.note}")
    return rows, any(row.status == "error" for row in rows)


def peak_rows(options: RunOptions, when: str, before: float | None) -> tuple[float, list[Measurement]]:
    """The machine's dense matmul and conv rates as rows, and the peak (the faster); 0.0 and an
    error row where they could not be measured (no memory for the problem): the run goes on
    without peak fractions."""
    try:
        # --quick (a smoke test, its rows apart in results-quick/) warms as briefly as the watch
        # around each timing does
        rates, fitted = peak.peak_with_note(options.device, options.dtype,
                                            min_run_time=0.2 if options.quick else 2.0,
                                            warm_s=0.2 if options.quick else 1.0)
    except (MemoryError, RuntimeError) as exc:
        return 0.0, [Measurement("_machine", "speed", "peak_gmacs_per_s", None, "GMAC/s", when,
                                 status="error", error=f"{type(exc).__name__}: {failure_text(exc)}")]
    best = max(rates.values())
    kind = max(rates, key=rates.get)
    drift = "" if before is None else f" ({best / before - 1:+.0%} vs before)"
    moment = "before the first timing" if before is None else "after the sweep"
    side, shape, _ = peak.fitted_problem(options.device, options.dtype)
    rows = [Measurement("_machine", "speed", "peak_gmacs_per_s", best, "GMAC/s", when,
                        note=f"the faster of a {side}^3 matmul and a dense 3x3x3 conv on "
                             f"{'x'.join(map(str, shape))} ({kind}) in {options.dtype}, "
                             f"{moment}{drift}" + (f"; {fitted}" if fitted else ""))]
    rows += [Measurement("_machine", "speed", f"peak_gmacs_per_s_{k}", v, "GMAC/s", when,
                         note=f"{options.dtype}, {moment}") for k, v in rates.items()]
    return best, rows


def brief_peak(options: RunOptions):
    """The machine's peak measured in a fraction of a second, for the watch around each timing
    (None with ``--quick``, where a second of peak per model is its time)."""
    if options.quick:
        return None
    return lambda: max(peak.peak_gmacs_per_s(options.device, options.dtype, min_run_time=0.2,
                                             warm_s=0.2).values())


def job_memory_row() -> Measurement:
    """The job's own peak resident set: this process, and the largest probe child's."""
    child = memory.largest_child_mb
    return Measurement("_machine", "memory", "job_peak_rss_mb", memory.peak_rss_kib() / 1024, "MB",
                       note="this run.py process (VmHWM)"
                            + (f"; its largest RSS probe child peaked at {child:.0f} MB" if child else ""))
