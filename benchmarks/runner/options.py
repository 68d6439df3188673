"""``run.py``'s command line, parsed into one ``RunOptions``: every value resolved (groups into
model names, ``auto`` into a device, the kernels condition) and checked, so a value that cannot
mean anything is one line and exit status 2 before anything is measured."""

import argparse
import math
import os
import sys
from dataclasses import dataclass, replace

import torch

import models
from benchmarks import runtimes
from benchmarks.data import datasets
from benchmarks.measure import cost, workload
from benchmarks.measure.workload import DTYPES
from models import kernels, ledger

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
# where --quick writes unless told: its timings use tiny budgets, and in results/ they would be
# the newest rows the report shows, and would satisfy a later full run's "already measured"
QUICK_RESULTS = "results-quick"
DESCRIPTION = "Measure what models cost: python benchmarks/run.py --models mfnet,i3d"


@dataclass(frozen=True)
class RunOptions:
    """What one ``run.py`` invocation measures, and how; every field resolved and checked."""

    models: tuple[str, ...]  # cost, memory and speed
    accuracy_models: tuple[str, ...]  # the motion benchmark
    data_models: tuple[str, ...]  # the loader against the model
    measure: tuple[str, ...]
    device: str  # cpu | cuda
    dtype: str = "fp32"
    # best | ncdhw | channels_last: "best" runs each model on its fastest path here, the layout
    # and, unless --fiber-kernel says, the kernels (benchmarks/measure/path.py)
    layout: str = "best"
    compile: bool = False  # the compile runtime (--compile, or --runtime compile)
    # the runtimes asked for (benchmarks/runtimes); one sweep measures under one of them (``runtime``)
    runtimes: tuple[str, ...] = ("eager",)
    runtime: str = "eager"
    # suite | stock | paired: the kernels the models run on (``resolve_kernels``)
    fiber_kernel: str = "suite"
    kernels_asked: bool = False  # --fiber-kernel given: every model on those kernels, none chosen
    # models whose speed is also timed on stock kernels, in alternating rounds in this process:
    # every model with --fiber-kernel paired; by default footnote 5's pair (``ledger.FOOTNOTE5_PAIR``)
    paired_models: tuple[str, ...] = ()
    batch_size: int = 4
    clip: tuple[int, int, int] | None = None  # None: each model's spec input
    results: str = "results"
    quick: bool = False
    force: bool = False
    seed: int = 0
    train_budget: float = TRAIN_BUDGET_S
    epochs: int | None = None  # the equal-epoch protocol instead of a time budget
    dataset: str | None = None
    root: str | None = None
    split: int = 1
    workers: int = 1
    argv: tuple[str, ...] = ()

    @property
    def channels_last(self) -> bool:
        return self.layout == "channels_last"

    @property
    def suite_kernels(self) -> bool:
        return self.fiber_kernel != "stock"


class UsageError(ValueError):
    """Input a run cannot honour, found before or as it starts; the message is one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def clip_type(text: str) -> tuple[int, int, int]:
    """``workload.parse_clip`` as an argparse type: its message, verbatim."""
    try:
        return workload.parse_clip(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> OneLineParser:
    p = OneLineParser(prog="run.py", description=DESCRIPTION)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a file or module whose @models.register_model builders add models (repeatable)")
    p.add_argument("--models", default=None,
                   help="comma-separated names or a group: all, video, image, paper, paper-video (default: "
                        f"paper-video for cost/memory/speed, and {','.join(MOTION_MODELS)} for accuracy)")
    p.add_argument("--measure", default=",".join(MEASUREMENTS),
                   help=f"any of {','.join(MEASUREMENTS)} (default: all); accuracy trains and evaluates on the "
                        "built-in motion benchmark, video models only")
    p.add_argument("--train-budget", type=float, default=None,
                   help="accuracy: seconds of training per model, the same for every model "
                        f"(default {TRAIN_BUDGET_S:g}, quick {QUICK_TRAIN_BUDGET_S:g})")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="accuracy: the equal-epoch protocol, every model trains this many epochs instead of "
                        "for a time budget (e.g. 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="throughput batch; latency is always at batch 1 (default 4, quick 2)")
    p.add_argument("--clip", type=clip_type, default=None,
                   help="T,H,W overriding the spec's input (image models: 1,H,W)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--layout", default=None, choices=("best", "ncdhw", "channels-last"),
                   help="speed: the memory layout of every model's input and weights. best (default): each model "
                        "on its fastest path here, NCDHW or channels-last and (unless --fiber-kernel says) the "
                        "suite's kernels or PyTorch's where the suite's apply, chosen by a short timed probe once "
                        "per model, machine and dtype and recorded in the store; memory is measured in NCDHW "
                        "unless channels-last is asked for")
    p.add_argument("--channels-last", action="store_true", help="--layout channels-last")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor): --runtime compile")
    p.add_argument("--runtime", default=None,
                   help=f"speed: comma-separated runtimes, any of {','.join(runtimes.RUNTIMES)} (default eager: "
                        "PyTorch with each model's default kernels). Each is timed under the same discipline, after "
                        "its outputs are checked against eager's on a fixed input; onnxruntime and openvino run "
                        "one ONNX export per model and input (kept under <results>/.exports), tensorrt needs CUDA "
                        "and torch-tensorrt. Cost, memory and accuracy are measured on eager")
    p.add_argument("--fiber-kernel", nargs="?", const="suite", choices=("suite", "stock", "paired"),
                   help="the suite's kernels (models/kernels: fiber convs, pointwise convs, BatchNorm + ReLU; "
                        "rows: kernels=suite) or PyTorch's (stock, as footnote 5 found it); dense convs stay on "
                        "PyTorch's. Default: suite wherever it runs (CPU, fp32, eager), else stock. 'paired': "
                        "speed also times each model on stock kernels in the same process, in alternating "
                        "rounds (rows of both, one run id), the comparison footnote 5's forecast is judged on")
    p.add_argument("--results", default=None,
                   help="results directory (default: results/; with --quick, results-quick/, so smoke-test "
                        "timings never stand in for the measured ones in results/)")
    p.add_argument("--quick", action="store_true",
                   help="small time budgets, for CI and smoke runs (no CPU peak-RSS probe)")
    p.add_argument("--force", action="store_true", help="re-measure what is already in results")
    p.add_argument("--dataset", choices=tuple(datasets.LAYOUTS),
                   help="data: the dataset layout whose loader is measured")
    p.add_argument("--root", help="data: the dataset's folder")
    p.add_argument("--split", type=positive_int, default=1, help="data: the split (UCF-101, HMDB-51)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="data: loader workers a training run would use (default min(8, CPUs))")
    return p


def parse_args(argv: list[str] | None = None) -> RunOptions:
    """The command line as ``RunOptions``; anything that cannot mean something exits 2 in one line."""
    p = parser()
    a = p.parse_args(argv)
    try:
        return resolve(a, argv)
    except ValueError as exc:
        p.error(str(exc))


def resolve(a: argparse.Namespace, argv: list[str] | None) -> RunOptions:
    """``argparse``'s namespace as ``RunOptions``: defaults filled, names and groups resolved,
    values checked (``ValueError`` with a one-line message)."""
    for target in a.imports:
        for name in models.import_models(target):
            models.check_input(name, (1, *models.get_spec(name).input_shape))
    named = a.models is not None  # "" is a list of no models, not the default
    measure = resolve_measurements(a.measure)
    device = resolve_device(a.device)
    if a.dtype == "tf32" and device != "cuda":
        raise ValueError("--dtype tf32 is a CUDA math mode; on a CPU use fp32")
    if "data" in measure and not (a.dataset and a.root):
        raise ValueError("--measure data needs --dataset and --root (the files whose loading is timed)")
    timed = resolve_models(a.models if named else "paper-video")
    asked_runtimes = resolve_runtimes(a.runtime, a.compile)
    kernels_asked = resolve_kernels(a.fiber_kernel, device, a.dtype, asked_runtimes == ("compile",))
    if (why := runtimes.native_why_not(device, a.dtype)):
        raise ValueError(f"--dtype {a.dtype}: {why}")
    options = RunOptions(
        models=timed,
        accuracy_models=resolve_models(a.models if named else ",".join(MOTION_MODELS)),
        data_models=resolve_models(a.models if named else "mfnet"),
        measure=tuple(measure), device=device, dtype=a.dtype, layout=resolve_layout(a.layout, a.channels_last),
        compile=asked_runtimes == ("compile",), runtimes=asked_runtimes, runtime=asked_runtimes[0],
        fiber_kernel=kernels_asked, paired_models=paired(timed, kernels_asked, a.fiber_kernel),
        kernels_asked=a.fiber_kernel is not None,
        batch_size=a.batch_size or (2 if a.quick else 4),
        # data: the paper's clip for MF-Net, the authors' recipe
        clip=a.clip if a.clip is not None or "data" not in measure else (16, 224, 224),
        results=a.results or (QUICK_RESULTS if a.quick else "results"), quick=a.quick, force=a.force,
        seed=a.seed, train_budget=(QUICK_TRAIN_BUDGET_S if a.quick else TRAIN_BUDGET_S)
        if a.train_budget is None else a.train_budget, epochs=a.epochs, dataset=a.dataset, root=a.root,
        split=a.split, workers=a.workers or min(8, os.cpu_count() or 1),
        argv=tuple(sys.argv[1:] if argv is None else argv))
    check_accuracy_inputs(options, explicit=a.measure != ",".join(MEASUREMENTS))
    check_clip_fits_every_model(options)
    return options


def resolve_layout(asked: str | None, channels_last: bool) -> str:
    """``--layout`` (default best), or channels_last from ``--channels-last``; the two disagreeing
    is refused in one line."""
    if channels_last and asked not in (None, "channels-last"):
        raise ValueError(f"--channels-last with --layout {asked}: give one of them")
    return "channels_last" if channels_last else (asked or "best").replace("-", "_")


def resolve_runtimes(text: str | None, compiled: bool) -> tuple[str, ...]:
    """The runtimes to time on, in the order given: ``--runtime`` (``--compile`` alone is
    ``compile``). An unknown name, or one whose package is missing, is refused in one line;
    one that cannot run this device or dtype is skipped with a line when the run reaches it."""
    if text is None:
        return ("compile",) if compiled else ("eager",)
    chosen = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if compiled and "compile" not in chosen:
        raise ValueError("--compile with --runtime: name compile among the runtimes instead")
    if not chosen:
        raise ValueError(f"--runtime takes any of {', '.join(runtimes.RUNTIMES)}; got {text!r}")
    for runtime in chosen:
        if why := runtimes.refusal(runtime):
            raise ValueError(f"--runtime {runtime}: {why}")
    return chosen


def per_runtime(options: RunOptions) -> list[RunOptions]:
    """One sweep's options per runtime asked for: speed under each; cost, memory, accuracy and the
    loader on eager only (they do not depend on the runtime), in an eager sweep of their own where
    eager's speed was not asked for. Kernels: each model's default on eager (and paired as asked),
    PyTorch's own under the others."""
    others = tuple(m for m in options.measure if m != "speed")
    sweeps = []
    if others and "eager" not in options.runtimes:
        sweeps.append(replace(options, runtime="eager", compile=False, measure=others))
    for runtime in options.runtimes:
        measure = options.measure if runtime == "eager" else ("speed",) if "speed" in options.measure else ()
        if not measure:
            continue
        if runtime == "eager":
            sweeps.append(replace(options, runtime="eager", compile=False, measure=measure))
        else:
            sweeps.append(replace(options, runtime=runtime, compile=runtime == "compile", measure=measure,
                                  fiber_kernel="stock", paired_models=()))
    return sweeps


def resolve_kernels(asked: str | None, device: str, dtype: str, compiled: bool) -> str:
    """suite, stock or paired. Unset: the suite's kernels wherever they run, as MF-Net's own
    default; else stock. Rows marked kernels=suite must have run on them, so an explicit suite or
    paired that cannot run is refused. The library is built here (a minute, once per machine),
    never inside a timing."""
    kernels.check_settings()  # an unreadable MFNET_FIBER_KERNEL or MFNET_LARGE_BLOCK_POOL stops here
    if asked == "stock":
        return "stock"
    why = kernels.why_not(device, dtype, compiled)
    if why and asked:
        raise ValueError(f"--fiber-kernel {asked}: {why}")
    return "stock" if why else asked or "suite"


def paired(timed: tuple[str, ...], kernels_run: str, asked: str | None) -> tuple[str, ...]:
    """The models whose speed is timed on both kernels: all with ``--fiber-kernel paired``; unasked,
    where the suite's kernels run, footnote 5's pair, so that the default job measures what the
    report's verdict on it needs; none with an explicit suite or stock."""
    if kernels_run == "paired":
        return timed
    if asked is None and kernels_run == "suite":
        return tuple(n for n in timed if n in ledger.FOOTNOTE5_PAIR)
    return ()


def check_accuracy_inputs(options: RunOptions, explicit: bool) -> None:
    """Refuse accuracy settings the motion benchmark cannot honour."""
    if "accuracy" not in options.measure:
        return
    budget = options.train_budget
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--train-budget {budget:g} is invalid: need a finite number of seconds > 0")
    images = [n for n in options.accuracy_models if not models.get_spec(n).is_video]
    if explicit and images:
        raise ValueError(f"--measure accuracy trains on clips; {', '.join(images)} take images "
                         "(a 2D model runs per frame as <name>_frames)")
    if options.clip is not None and options.clip[1] != options.clip[2]:
        raise ValueError(f"--clip {','.join(map(str, options.clip))}: the motion benchmark's clips are "
                         "square, so H and W must be equal")


def check_clip_fits(name: str, clip) -> None:
    """Run the model on the meta device at ``clip``: a clip too small for its pooling fails
    here, before anything is measured, and names the model."""
    try:
        models.check_input(name, cost.input_shape(name, clip))
    except ValueError as exc:
        raise ValueError(f"--clip {','.join(map(str, clip))} does not fit {name}: "
                         f"{str(exc).split(': ', 1)[-1]}") from None


def check_clip_fits_every_model(options: RunOptions) -> None:
    if options.clip is None:
        return
    timed = list(options.models) if set(options.measure) & set(MEASUREMENTS[:3]) else []
    data = list(options.data_models) if "data" in options.measure else []
    for name in dict.fromkeys(timed + data):
        check_clip_fits(name, options.clip)


def resolve_models(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in models.GROUPS:
            names += models.list_models(item)
        else:
            models.get_spec(item)  # raises ValueError naming the closest matches
            names.append(item)
    if not names:
        raise ValueError("--models is empty")
    return tuple(dict.fromkeys(names))


def resolve_measurements(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [m for m in chosen if m not in MEASUREMENTS + EXTRA_MEASUREMENTS]
    if unknown or not chosen:
        raise ValueError(f"--measure takes any of {', '.join(MEASUREMENTS + EXTRA_MEASUREMENTS)}; got {text!r}")
    return chosen


def resolve_device(device: str) -> str:
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ValueError("--device cuda, but no CUDA GPU is available here (try --device cpu)")
    return "cpu"
