"""Measure what models cost: ``python benchmarks/run.py --models mfnet,i3d``.

Each model is measured at its spec's input (the paper's) unless ``--clip`` overrides it, under
one setup (device, dtype, memory format, compile), into the append-only store in ``--results``.
A failure in one model or measurement becomes an ``error`` row and the sweep goes on. Bad
input is refused with one line and exit status 2. Exit status 1 means some rows are errors.
"""

import argparse
import dataclasses
import datetime as dt
import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import models
from benchmarks import (
    cost,
    datasets,
    disturbance,
    environment,
    loader_speed,
    memory,
    motion,
    runtime,
    speed,
    train,
    workload,
)
from benchmarks.contention import CpuMeter
from benchmarks.results import Measurement, ResultsStore, RunConditions, new_run_id, under
from benchmarks.workload import DTYPES, Setup, Workload
from models.errors import first_line

MEASUREMENTS = ("cost", "memory", "speed", "accuracy")
# on request only: the loader against the model on a dataset on disk (--dataset, --root)
EXTRA_MEASUREMENTS = ("data",)
# accuracy is the motion benchmark: the models the default job trains (the 3D vs 2D claim)
MOTION_MODELS = ("mfnet", "mfnet2d_frames", "i3d", "r2plus1d", "res3d")
# reduced from 16x224x224 so five models train on a 2-core CPU; 16x48x48 costs 2.25x more per
# clip, and the heavy models (Res3D, R(2+1)D) then saw too few clips in the budget to learn
MOTION_CLIP = (16, 32, 32)
# seconds of training per model in the default job: five models fit its 20-minute budget
TRAIN_BUDGET_S = 60.0
# --quick trains each model for a few steps on a few clips: a smoke test of the whole path (data,
# training, multi-view evaluation, rows), not an accuracy; `--models video --quick` trains 22
QUICK_TRAIN_BUDGET_S = 2.0
QUICK_MOTION = dict(batch_size=4, train_size=32, val_size=12)
# where --quick writes unless told: its timings use tiny budgets, and in results/ they would be
# the newest rows the report shows, and would satisfy a later full run's "already measured"
QUICK_RESULTS = "results-quick"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def resolve_fiber_kernel(args: argparse.Namespace) -> None:
    """``args.fiber_kernel``: suite, stock or paired. Unset, the suite's kernel wherever it runs,
    as MF-Net's own default; else stock. Rows marked kernels=suite must have run on it, so an
    explicit suite or paired that cannot run is refused. The kernel is built here (a minute,
    once per machine), never inside a timing."""
    from models import kernels

    kernels.check_settings()  # an unreadable MFNET_FIBER_KERNEL or MFNET_LARGE_BLOCK_POOL stops here
    asked = args.fiber_kernel
    if asked == "stock":
        return
    why = kernels.why_not(args.device, args.dtype, args.compile)
    if why and asked:
        raise ValueError(f"--fiber-kernel {asked}: {why}")
    args.fiber_kernel = "stock" if why else asked or "suite"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a file or module whose @models.register_model builders add models "
                        "(repeatable)")
    p.add_argument("--models", default=None,
                   help="comma-separated names or a group: all, video, image, paper, paper-video "
                        "(default: paper-video for cost/memory/speed, and "
                        f"{','.join(MOTION_MODELS)} for accuracy)")
    p.add_argument("--measure", default=",".join(MEASUREMENTS),
                   help=f"any of {','.join(MEASUREMENTS)} (default: all); accuracy trains and "
                        "evaluates on the built-in motion benchmark, video models only")
    p.add_argument("--train-budget", type=float, default=None,
                   help="accuracy: seconds of training per model, the same for every model "
                        f"(default {TRAIN_BUDGET_S:g}, quick {QUICK_TRAIN_BUDGET_S:g})")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="accuracy: the equal-epoch protocol, every model trains this many epochs "
                        "instead of for a time budget (e.g. 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="throughput batch; latency is always at batch 1 (default 4, quick 2)")
    p.add_argument("--clip", type=parse_clip, default=None,
                   help="T,H,W overriding the spec's input (image models use H,W)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument("--fiber-kernel", nargs="?", const="suite", choices=("suite", "stock", "paired"),
                   help="MF-Net's fiber convs (grouped (1|3)x3x3) and its BatchNorm + ReLU on the "
                        "suite's kernel (models/fiber_kernel.py; rows: kernels=suite) or on "
                        "PyTorch's (stock, as footnote 5 found it); dense convs stay on PyTorch's. "
                        "Default: suite wherever it runs (CPU, fp32, eager), else stock. 'paired': "
                        "speed also times each model on stock kernels in the same process, in "
                        "alternating rounds (rows of both, one run id), the comparison footnote "
                        "5's forecast is judged on")
    p.add_argument("--results", default=None,
                   help="results directory (default: results/; with --quick, results-quick/, so "
                        "smoke-test timings never stand in for the measured ones in results/)")
    p.add_argument("--quick", action="store_true",
                   help="small time budgets, for CI and smoke runs (no CPU peak-RSS probe)")
    p.add_argument("--force", action="store_true", help="re-measure what is already in results")
    p.add_argument("--dataset", choices=tuple(datasets.LAYOUTS),
                   help="data: the dataset layout whose loader is measured")
    p.add_argument("--root", help="data: the dataset's folder")
    p.add_argument("--split", type=positive_int, default=1, help="data: the split (UCF-101, HMDB-51)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="data: loader workers a training run would use (default min(8, CPUs))")
    args = p.parse_args(argv)
    try:
        for target in args.imports:
            for name in models.import_models(target):
                models.check_input(name, (1, *models.get_spec(name).input_shape))
        named = args.models is not None  # "" is a list of no models, not the default
        args.accuracy_models = resolve_models(args.models if named else ",".join(MOTION_MODELS))
        args.data_models = resolve_models(args.models if named else "mfnet")
        args.models = resolve_models(args.models if named else "paper-video")
        explicit = args.measure != ",".join(MEASUREMENTS)
        args.measure = resolve_measurements(args.measure)
        args.device = resolve_device(args.device)
        if args.dtype == "tf32" and args.device != "cuda":
            raise ValueError("--dtype tf32 is a CUDA math mode; on a CPU use fp32")
        resolve_fiber_kernel(args)
        check_accuracy_inputs(args, explicit)
    except ValueError as exc:
        p.error(str(exc))
    if "data" in args.measure and not (args.dataset and args.root):
        p.error("--measure data needs --dataset and --root (the files whose loading is timed)")
    if "data" in args.measure and args.clip is None:
        args.clip = (16, 224, 224)  # the paper's clip for MF-Net; the authors' recipe
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1)
    if args.results is None:
        args.results = QUICK_RESULTS if args.quick else "results"
    if args.batch_size is None:
        args.batch_size = 2 if args.quick else 4
    if args.train_budget is None:
        args.train_budget = QUICK_TRAIN_BUDGET_S if args.quick else TRAIN_BUDGET_S
    args.parser = p
    return args


def check_accuracy_inputs(args: argparse.Namespace, explicit: bool) -> None:
    """Refuse accuracy settings the motion benchmark cannot honour (``ValueError``)."""
    if "accuracy" not in args.measure:
        return
    budget = args.train_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--train-budget {budget:g} is invalid: need a finite number of seconds > 0")
    images = [n for n in args.accuracy_models if not models.get_spec(n).is_video]
    if explicit and images:
        raise ValueError(f"--measure accuracy trains on clips; {', '.join(images)} take images "
                         "(a 2D model runs per frame as <name>_frames)")
    if args.clip is not None and args.clip[1] != args.clip[2]:
        raise ValueError(f"--clip {','.join(map(str, args.clip))}: the motion benchmark's clips are "
                         "square, so H and W must be equal")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_clip(text: str) -> tuple[int, int, int]:
    """``workload.parse_clip`` as an argparse type: its message, verbatim."""
    try:
        return workload.parse_clip(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_models(text: str) -> list[str]:
    names: list[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in models.GROUPS:
            names += models.list_models(item)
        else:
            models.get_spec(item)  # raises ValueError naming the closest matches
            names.append(item)
    if not names:
        raise ValueError("--models is empty")
    return list(dict.fromkeys(names))


def resolve_measurements(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [m for m in chosen if m not in MEASUREMENTS + EXTRA_MEASUREMENTS]
    if unknown or not chosen:
        raise ValueError(f"--measure takes any of {', '.join(MEASUREMENTS + EXTRA_MEASUREMENTS)}; "
                         f"got {text!r}")
    return chosen


def resolve_device(device: str) -> str:
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ValueError("--device cuda, but no CUDA GPU is available here (try --device cpu)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def clip_label(name: str, clip) -> str:
    return "x".join(str(v) for v in cost.input_shape(name, clip)[2:])


def check_clip_fits(name: str, clip) -> None:
    """Run the model on the meta device at ``clip``: a clip too small for its pooling fails
    here, before anything is measured, and names the model."""
    try:
        models.check_input(name, cost.input_shape(name, clip))
    except ValueError as exc:
        raise ValueError(f"--clip {','.join(map(str, clip))} does not fit {name}: "
                         f"{str(exc).split(': ', 1)[-1]}") from None


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
        rows += [Measurement(name, "cost", "gmacs_fvcore", fv["conv_linear"] / 1e9, "GMAC",
                             clip=label, note="conv+linear, fvcore on real tensors"),
                 Measurement(name, "cost", "gmacs_fvcore_all", fv["all"] / 1e9, "GMAC",
                             clip=label, note="fvcore total, with BatchNorm and pooling")]
    return rows


def required_metrics(measurement: str, args) -> list[tuple[str, int | None]]:
    """The (metric, batch) rows a finished measurement leaves under this run's options, so a
    re-run skips exactly what is already measured (batch None: any batch)."""
    if measurement == "cost":
        return [("params", None), ("gmacs", None)]
    if measurement == "data":
        return [("loader_speedup", None), ("model_train_clips_per_s", None)]
    if measurement == "accuracy":  # the same protocol: a 60 s run does not satisfy a 6-epoch one
        return [("top1_video", None, accuracy_protocol(args))]
    # on CUDA an out-of-memory retry records the smaller batch that worked: any batch will do
    batch = None if args.device == "cuda" else args.batch_size
    if measurement == "speed":
        return [("latency_ms", 1), ("infer_clips_per_s", batch), ("train_clips_per_s", batch)]
    rows = [("activation_mb", None)]
    if args.device == "cuda":
        rows.append(("peak_alloc_mb_train", batch))
    elif not args.quick:
        rows.append(("peak_rss_mb_train", args.batch_size))
    return rows


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


def check_inputs(args: argparse.Namespace, store: ResultsStore) -> None:
    """Refuse, with one line and exit status 2, what would fail later: an unwritable store, a
    clip a model cannot take."""
    try:
        store.check_writable()
    except OSError as exc:
        args.parser.error(f"cannot write results to {args.results}: {exc.strerror or exc}")
    if args.clip is not None:
        timed = args.models if set(args.measure) & set(MEASUREMENTS[:3]) else []
        data = args.data_models if "data" in args.measure else []
        for name in dict.fromkeys(timed + data):
            try:
                check_clip_fits(name, args.clip)
            except ValueError as exc:
                args.parser.error(str(exc))


def measurement_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(model, measurement) in the order they run: costs and timings, data, then training."""
    plan = [(name, m) for name in args.models for m in args.measure if m in MEASUREMENTS[:3]]
    if "data" in args.measure:
        plan += [(n, "data") for n in args.data_models if models.get_spec(n).is_video]
    if "accuracy" in args.measure:
        plan += [(n, "accuracy") for n in args.accuracy_models if models.get_spec(n).is_video]
    return plan


class RunWriter:
    """Appends a run's rows under its conditions. The environment sidecar goes with the run's
    first rows: a run that skips everything it was asked for (all held already) leaves no file
    behind, so a clean checkout stays clean."""

    def __init__(self, args: argparse.Namespace, store: ResultsStore):
        self.store, self.run_id = store, new_run_id()
        env = environment.collect(args.device) | {"malloc": runtime.keep_freed_memory()}
        if args.device == "cuda":
            env["gpu_policy"] = runtime.gpu_policy(args.dtype)
        self.conditions = RunConditions(self.run_id, args.device, env["device_name"], args.dtype,
                                        args.channels_last, args.compile, env["threads"],
                                        "stock" if args.fiber_kernel == "stock" else "suite")
        self.sidecar = env | {"quick": args.quick, "batch_size": args.batch_size, "argv": sys.argv[1:]}
        if args.fiber_kernel == "paired":
            self.sidecar["speed_kernels"] = ("stock and suite, timed in alternating rounds in this "
                                             "process (rows of both under this run id)")
        self.sidecar_written = False

    def save(self, rows: list[Measurement]) -> None:
        if not self.sidecar_written:
            self.store.write_environment(self.run_id, self.sidecar)
            self.sidecar_written = True
        self.store.append(rows, self.conditions, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def measure_isolated(name: str, measurement: str, args, setup: Setup, label: str, peak,
                     console, watch=None) -> tuple[list[Measurement], bool]:
    """(rows, failed): a failure becomes one error row and the sweep carries on."""
    try:
        rows = measure_one(name, measurement, args, setup, label, peak, watch)
    except Exception as exc:
        message = first_line(exc, "")
        rows = [Measurement(name, measurement, "error", None, "", clip=label, status="error",
                            error=f"{type(exc).__name__}: {message}")]
        console.print(f"[red]{name} {measurement}: {rows[0].error}")
        return rows, True
    finally:
        runtime.give_back_memory()  # what this model freed is not held while the next runs
    for row in rows:
        if row.status == "error":
            console.print(f"[red]{name} {row.metric}: {row.error}")
        elif row.note.startswith(("noisy", disturbance.MARK)) and row.metric not in (
                "gmacs_per_s", "peak_fraction"):
            kernels = f", {row.kernels} kernels" if row.kernels else ""
            console.print(f"[yellow]warning: {name} {row.metric} (batch {row.batch_size}{kernels}) "
                          f"is {row.note}")
    return rows, any(row.status == "error" for row in rows)


def run(args: argparse.Namespace, console: Console) -> int:
    store = ResultsStore(args.results)
    check_inputs(args, store)
    setup = Setup(args.device, args.dtype, args.channels_last, args.compile,
                  args.fiber_kernel != "stock")
    writer = RunWriter(args, store)
    args.conditions = writer.conditions
    # --fiber-kernel paired: speed rows also stand under stock kernels (Measurement.kernels)
    args.also = ([dataclasses.replace(writer.conditions, kernels="stock")]
                 if args.fiber_kernel == "paired" else [])
    # the machine's peak, measured just before the run's first timing: a run whose timings are
    # all in results/ already records none, so no peak stands in the store without timings
    peak, errors, claimed_elsewhere = None, 0, 0
    plan = measurement_plan(args)
    args.probes = {}
    motion_clip = args.clip or MOTION_CLIP
    probing = not (args.epochs or args.quick)  # the clip-budget protocol needs every model's rate
    todo = [n for n, m in plan if m == "accuracy" and probing and (args.force or not store.done(
        n, m, writer.conditions, clip_label(n, motion_clip), required_metrics(m, args), motion.LABEL))]
    if todo:  # every model's training rate first, so budgets share one view of the machine
        console.print(f"probing the training rate of {len(todo)} model(s) for their clip budgets")
        args.probes = probe_phase(todo, args)
        best, worst = max(p for _, p in args.probes.values()), min(p for _, p in args.probes.values())
        if worst < disturbance.BUSY_SHARE * best:
            console.print(f"[yellow]warning: the machine's peak varied from {worst:.0f} to {best:.0f} "
                          "GMAC/s during the probes; budgets are scaled to the best")
        loads = list(args.probe_load.values())
        if loads and all(load.disturbed for load in loads):
            console.print(f"[yellow]warning: busy machine: during every probe {loads[-1].describe()}; "
                          "the clip budgets are flagged in their rows and in the report")
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    watch = None
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("models", total=len(plan))
        for name, measurement in plan:
            accuracy = measurement == "accuracy"
            label = clip_label(name, (args.clip or MOTION_CLIP) if accuracy else args.clip)
            progress.update(task, description=f"{name}: {measurement}")
            dataset = motion.LABEL if accuracy else args.dataset if measurement == "data" else None
            key = (name, measurement, label, dataset)
            if not held(store, args, *key):
                # another run.py on this store may be measuring it: claim it first, then look
                # again, since that run may have finished between the two looks
                with store.claim(*key, args.conditions) as other:
                    if other:
                        progress.console.print(f"[yellow]{name} {measurement}: skipped, another run "
                                               f"is measuring it ({other})")
                        claimed_elsewhere += 1
                    elif not held(store, args, *key):
                        if measurement == "speed" and peak is None:
                            peak = measure_peak(args, writer.save, "start", None)
                            watch = disturbance.MachineWatch(args.device, args.dtype, peak,
                                                             brief_peaks=not args.quick)
                        rows, failed = measure_isolated(name, measurement, args, setup, label, peak,
                                                        progress.console, watch)
                        errors += failed
                        if rows:
                            writer.save(rows)
            progress.advance(task)
    if peak is not None:  # shared and virtual machines drift: measure the roofline again
        drift = measure_peak(args, writer.save, "end", peak) / peak - 1
        if abs(drift) > 0.15:
            console.print(f"[yellow]warning: the machine's peak rate drifted {drift:+.0%} during "
                          "the sweep; timings from this run are less comparable")
    if writer.sidecar_written and args.device == "cpu":  # what the job itself needed
        writer.save([job_memory_row()])
    if any(m in ("cost", "memory", "speed") for m in args.measure):
        print_summary(console, store, args.models, writer.conditions, args.clip)
    if "accuracy" in args.measure:
        print_accuracy_summary(console, store, args.accuracy_models, writer.conditions,
                               "x".join(map(str, args.clip or MOTION_CLIP)),
                               accuracy_protocol(args))
    if claimed_elsewhere:
        console.print(f"{claimed_elsewhere} measurement(s) were left to another run on {store.root}; "
                      "its rows land in the same store")
    if errors:
        console.print(f"[red]{errors} measurement(s) failed; see rows with status=error in "
                      f"{store.csv}")
    return 1 if errors else 0


def held(store: ResultsStore, args, name: str, measurement: str, label: str, dataset) -> bool:
    """Whether the store holds this measurement under the run's conditions (never, --force);
    a paired speed measurement, under both of its conditions."""
    conditions = [args.conditions] + (getattr(args, "also", []) if measurement == "speed" else [])
    return not args.force and all(store.done(name, measurement, c, label,
                                             required_metrics(measurement, args), dataset)
                                  for c in conditions)


def job_memory_row() -> Measurement:
    """The job's own peak resident set: this process, and the largest probe child's."""
    child = memory.largest_child_mb
    return Measurement("_machine", "memory", "job_peak_rss_mb", memory.peak_rss_kib() / 1024, "MB",
                       note="this run.py process (VmHWM)"
                            + (f"; its largest RSS probe child peaked at {child:.0f} MB" if child else ""))


def measure_peak(args, save, when: str, before: float | None) -> float:
    """Record the machine's dense matmul and conv rates and return the peak (the faster)."""
    rates, shrunk = speed.peak_with_note(args.device, args.dtype,
                                         min_run_time=0.2 if args.quick else 2.0)
    peak = max(rates.values())
    kind = max(rates, key=rates.get)
    drift = "" if before is None else f" ({peak / before - 1:+.0%} vs before)"
    moment = "before the first timing" if before is None else "after the sweep"
    size = speed.peak_problem(args.device)[0]
    save([Measurement("_machine", "speed", "peak_gmacs_per_s", peak, "GMAC/s", when,
                      note=f"the faster of a {size}^3 matmul and a dense 3x3x3 conv ({kind}) in "
                           f"{args.dtype}, {moment}{drift}" + (f"; {shrunk}" if shrunk else ""))]
         + [Measurement("_machine", "speed", f"peak_gmacs_per_s_{k}", v, "GMAC/s", when,
                        note=f"{args.dtype}, {moment}")
            for k, v in rates.items()])
    return peak


def measure_one(name, measurement, args, setup, label, peak, watch=None) -> list[Measurement]:
    if measurement == "cost":
        return measure_cost(name, args.clip, label, args.quick)
    if measurement == "accuracy":
        return measure_accuracy(name, args)
    if measurement == "data":
        return loader_speed.measure_data(
            name, args.dataset, args.root, args.clip, split=args.split, workers=args.workers,
            setup=setup, batch=args.batch_size, items=4 if args.quick else 8,
            min_run_time=0.1 if args.quick else 1.0)
    cpu, batch = args.device == "cpu", args.batch_size
    if measurement == "memory":
        short = cpu and not args.quick and memory_short(name, args, "train", fresh_process=True)
        rows, used = with_oom_retry(
            lambda b: memory.measure_memory(name, setup, args.clip, label, b, args.quick,
                                            rss_probe=not short),
            batch, args.device)
        if short:
            rows.append(short_row(name, "memory", "peak_rss_mb_train", label, batch, short))
    else:
        if cpu and (short := memory_short(name, args, "infer")):
            raise memory.MemoryShort(short)
        train_short = cpu and memory_short(name, args, "train")
        macs = cost.count_macs(name, args.clip).macs
        also = getattr(args, "also", [])  # conditions timed against the run's (paired)
        workloads = [Workload(name, setup, args.clip)]
        workloads += [Workload(name, dataclasses.replace(setup, fiber_kernel=c.kernels == "suite"),
                               args.clip) for c in also]

        def timing(b):
            per_workload = speed.measure_speed(workloads, label, b, macs, peak,
                                               0.1 if args.quick else 1.0,
                                               warmup=0 if args.quick else 1, train=not train_short)
            for rows_, conditions in zip(per_workload[1:], also):
                for row in rows_:
                    row.kernels = conditions.kernels
            return [row for rows_ in per_workload for row in rows_]

        rows, used = with_oom_retry(lambda b: watch.timed(lambda: timing(b)) if watch else timing(b),
                                    batch, args.device)
        if train_short:
            short = short_row(name, "speed", "train_clips_per_s", label, batch, train_short)
            rows += [short] + [dataclasses.replace(short, kernels=c.kernels) for c in also]
    if used != batch:
        for row in rows:
            row.note = (row.note + f"; OOM at batch {batch}, ran at {used}").lstrip("; ")
    return rows


def memory_short(name: str, args, phase: str, fresh_process: bool = False) -> str:
    """Why a CPU step of ``name`` would not fit in the memory left ("" if it fits): the memory
    guard, so a measurement is skipped with an error row rather than killed by the kernel."""
    return memory.shortfall(name, args.clip, args.batch_size, phase, args.dtype, fresh_process)


def short_row(name, measurement, metric, label, batch, why) -> Measurement:
    return Measurement(name, measurement, metric, None, "", "train", batch, label, status="error",
                       error=f"MemoryShort: skipped, {why}")


def accuracy_protocol(args) -> str:
    """The equal-time protocol (its budget turned into clips) or, with ``--epochs``, the
    equal-epoch one."""
    if args.epochs:
        return train.protocol(None, args.epochs)
    if args.quick:  # a smoke test of the whole path: the clock stops it, no probe phase
        return train.protocol(args.train_budget, 0)
    return train.protocol(None, 0, args.train_budget)


def accuracy_config(name: str, args, clip_budget: int | None = None, note: str = "") -> train.Config:
    """The motion-benchmark training run of ``name``: the motion preset, at the reduced clip,
    for the same time budget as every other model, given as ``clip_budget`` clips (or
    ``--epochs``, the equal-epoch protocol)."""
    preset = {k: v for k, v in train.PRESETS["motion"].items() if k != "epochs"}
    preset |= QUICK_MOTION if args.quick else dict(train_size=600, val_size=120)
    budget = ({} if args.epochs else dict(time_budget=args.train_budget) if args.quick
              else dict(clip_budget=clip_budget, clip_budget_of=args.train_budget, budget_note=note))
    return train.Config(
        model=name, dataset="motion", clip=args.clip or MOTION_CLIP, seed=args.seed,
        results=args.results, out=str(Path(args.results) / "checkpoints"),
        epochs=args.epochs or 1000, stock_kernels=args.fiber_kernel == "stock", **budget, **preset)


def probe_phase(names: list[str], args) -> dict[str, tuple[float, float]]:
    """{model: (training clips/s, machine peak GMAC/s)}, each model's training rate measured
    with the machine's peak just after it, all before any model trains; what other processes
    used during each probe goes to ``args.probe_load``."""
    probes, args.probe_load = {}, {}
    for name in names:
        with CpuMeter() as meter:
            rate = train.probe_rate(accuracy_config(name, args), seconds=3.0)
        peak = max(speed.peak_gmacs_per_s(args.device, args.dtype, min_run_time=0.2).values())
        probes[name], args.probe_load[name] = (rate, peak), meter.result
    return probes


def clip_budget(name: str, args) -> tuple[int, str]:
    """The time budget as clips: the model's probed training rate, scaled by the best peak of
    the probe phase over the peak at its probe, so a load that came and went during the
    probes does not shrink one model's budget. A whole phase far below the best peak recorded
    under these conditions (another job all along, or a slower host of the same name) is
    flagged, not scaled: the store cannot tell the two apart. So is a phase in which other
    processes took CPU during every probe (a steady load, seen even with nothing recorded)."""
    rate, peak = args.probes[name]
    best_now = max(p for _, p in args.probes.values())
    frame = ResultsStore(args.results).frame()
    # the machine's peak is a dense conv's: the fiber kernel (kernels) plays no part in it
    recorded = frame[(frame["model"] == "_machine") & (frame["metric"] == "peak_gmacs_per_s")
                     & (frame["status"] == "ok") & under(frame, args.conditions, ("kernels",))]["value"]
    best_recorded = max([best_now, *recorded.tolist()])
    cfg = accuracy_config(name, args)
    clips = max(cfg.batch_size, round(rate * args.train_budget * best_now / peak))
    note = (f"{args.train_budget:g} s at {rate:.2f} clips/s probed, x{best_now / peak:.2f} for the "
            f"load during its probe (peak {peak:.0f}, the phase's best {best_now:.0f} GMAC/s)")
    loads = getattr(args, "probe_load", {})
    if loads and all(load.disturbed for load in loads.values()):
        note = f"busy machine: during every probe {loads[name].describe()}; " + note
    elif best_now < disturbance.BUSY_SHARE * best_recorded:
        note = (f"busy machine (or a slower host of the same name): the run's best peak was "
                f"{best_now:.0f} against {best_recorded:.0f} GMAC/s recorded; " + note)
    return clips, note


def measure_accuracy(name: str, args) -> list[Measurement]:
    """Train and evaluate on the motion benchmark. ``train`` writes its own rows (curves,
    top-1, the clip budget, and the epochs and clips each model reached)."""
    clip = args.clip or MOTION_CLIP
    check_clip_fits(name, clip)
    clips, note = (None, "") if args.epochs or args.quick else clip_budget(name, args)
    train.train(accuracy_config(name, args, clips, note))
    # the cost at the benchmark's clip, so the report can set accuracy against it
    label = "x".join(map(str, clip))
    return [row for row in measure_cost(name, clip, label, quick=True)
            if row.metric in ("params", "gmacs")]


SUMMARY = (("params", "params (M)", 1e-6), ("gmacs", "GMACs", 1), ("activation_mb", "act. MB", 1),
           ("latency_ms", "latency ms", 1), ("infer_clips_per_s", "infer clips/s", 1),
           ("train_clips_per_s", "train clips/s", 1))


def print_summary(console: Console, store: ResultsStore, names, run: RunConditions, clip) -> None:
    frame = store.frame()
    frame = frame[(frame["status"] == "ok") & under(frame, run)]
    table = Table(title=f"{run.device} / {run.dtype} (newest row per model and metric)")
    table.add_column("model", no_wrap=True)
    for _, header, _ in SUMMARY:
        table.add_column(header, justify="right")
    table.add_column("peak frac. (b=1)", justify="right")
    for name in names:
        rows = frame[(frame["model"] == name) & (frame["clip"] == clip_label(name, clip))]
        cells = []
        for metric, _, scale in SUMMARY:
            values = rows[rows["metric"] == metric]["value"]
            cells.append(f"{values.iloc[-1] * scale:.4g}" if len(values) else "-")
        fraction = rows[(rows["metric"] == "peak_fraction") & (rows["batch_size"] == 1)]["value"]
        cells.append(f"{fraction.iloc[-1]:.0%}" if len(fraction) else "-")
        table.add_row(name, *cells)
    console.print(table)


def print_accuracy_summary(console: Console, store: ResultsStore, names, run: RunConditions,
                           clip: str, protocol: str) -> None:
    frame = store.frame()
    frame = frame[(frame["status"] == "ok") & (frame["measurement"] == "accuracy")
                  & under(frame, run) & (frame["clip"] == clip)
                  & (frame["dataset"] == motion.LABEL)]
    runs = set(frame[(frame["metric"] == "top1_video") & (frame["protocol"] == protocol)]["run_id"])
    frame = frame[frame["run_id"].isin(runs)]
    table = Table(title=f"motion benchmark at {clip}, {protocol} "
                        "(newest run per model)")
    for header in ("model", "train s", "epochs", "clips seen", "top-1 video %"):
        table.add_column(header, justify="left" if header == "model" else "right",
                         no_wrap=header == "model")
    for name in names:
        rows = frame[frame["model"] == name]
        if rows.empty:
            continue
        rows = rows[rows["run_id"] == rows["run_id"].iloc[-1]].set_index("metric")["value"]
        table.add_row(name, *(f"{rows[m]:.4g}" if m in rows else "-" for m in
                              ("train_seconds", "epochs_completed", "clips_seen", "top1_video")))
    console.print(table)


def write_crash_log(results: str) -> Path:
    """The current exception's trace in ``<results>/crash-<time>.log`` (or the temp folder)."""
    import tempfile
    import traceback

    name = f"crash-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
    for folder in (Path(results), Path(tempfile.gettempdir())):
        try:
            path = folder / name
            path.write_text(traceback.format_exc())
            return path
        except OSError:
            continue
    return Path("(nowhere: no folder was writable)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # rich wraps to 80 columns when stdout is not a terminal (CI logs, `> run.log`), which
    # truncated the summary's numbers to "7.9…"; a wide console keeps them whole
    try:
        return run(args, Console(width=None if sys.stdout.isatty() else 160))
    except KeyboardInterrupt:
        print("run.py: interrupted; every finished measurement is stored (each append is atomic): "
              "run the same command again to measure the rest", file=sys.stderr)
        return 130
    except OSError as exc:  # a store that became unreadable or unwritable mid-run
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # a bug: its own status, the trace kept where the user can send it
        print(f"run.py: crashed; trace written to {write_crash_log(args.results)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
