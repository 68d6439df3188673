"""What a run measures, in which order, and what the store must hold for a measurement to count
as done (so a re-run skips exactly that)."""

import dataclasses

import models
from benchmarks.data import motion
from benchmarks.measure import cost, path
from benchmarks.runner.options import MEASUREMENTS, MOTION_CLIP, RunOptions
from benchmarks.store import ResultsStore, RunConditions, under
from benchmarks.training import protocol


def measurement_plan(options: RunOptions) -> list[tuple[str, str]]:
    """(model, measurement) in the order they run: costs and timings, data, then training."""
    plan = [(name, m) for name in options.models for m in options.measure if m in MEASUREMENTS[:3]]
    if "data" in options.measure:
        plan += [(n, "data") for n in options.data_models if models.get_spec(n).is_video]
    if "accuracy" in options.measure:
        plan += [(n, "accuracy") for n in options.accuracy_models if models.get_spec(n).is_video]
    return plan


def clip_label(name: str, clip) -> str:
    return "x".join(str(v) for v in cost.input_shape(name, clip)[2:])


def where(name: str, measurement: str, options: RunOptions) -> tuple[str, str | None]:
    """(clip label, dataset) a measurement's rows are stored under."""
    if measurement == "accuracy":
        return clip_label(name, options.clip or MOTION_CLIP), motion.LABEL
    return clip_label(name, options.clip), options.dataset if measurement == "data" else None


def accuracy_protocol(options: RunOptions) -> str:
    """The equal-time protocol (its budget turned into clips) or, with ``--epochs``, the
    equal-epoch one."""
    if options.epochs:
        return protocol(None, options.epochs)
    if options.quick:  # a smoke test of the whole path: the clock stops it, no probe phase
        return protocol(options.train_budget, 0)
    return protocol(None, 0, options.train_budget)


def required_metrics(measurement: str, options: RunOptions) -> list[tuple]:
    """The (metric, batch[, protocol]) rows a finished measurement leaves under these options
    (batch None: any batch)."""
    if measurement == "cost":
        return [("params", None), ("gmacs", None)]
    if measurement == "data":
        return [("loader_speedup", None), ("model_train_clips_per_s", None)]
    if measurement == "accuracy":  # the same protocol: a 60 s run does not satisfy a 6-epoch one
        return [("top1_video", None, accuracy_protocol(options))]
    # on CUDA an out-of-memory retry records the smaller batch that worked: any batch will do
    batch = None if options.device == "cuda" else options.batch_size
    if measurement == "speed":
        return [("latency_ms", 1), ("infer_clips_per_s", batch), ("train_clips_per_s", batch)]
    rows = [("activation_mb", None)]
    if options.device == "cuda":
        rows.append(("peak_alloc_mb_train", batch))
    elif not options.quick:
        rows.append(("peak_rss_mb_train", options.batch_size))
    return rows


def kernel_candidates(name: str, options: RunOptions) -> tuple[bool, ...]:
    """The kernels a best-path probe tries for ``name`` (suite or not), the run's first: both
    where the run's default kernels are the suite's and they apply to the model (and it is not
    timed on both anyway, paired), else the run's alone."""
    run = options.suite_kernels
    if options.kernels_asked or not run or name in options.paired_models:
        return (run,)
    return (True, False) if path.kernels_apply(name) else (run,)


def stored_choice(store: ResultsStore, run: RunConditions, name: str, label: str,
                  options: RunOptions) -> path.Choice | None:
    """The path a probe stored for ``name`` under ``run``'s machine and dtype (PyTorch's either
    runtime, any kernels), over the candidates it would try now; None where there is none
    (``--force``: never)."""
    frame = store.frame()
    if options.force or frame.empty:
        return None
    mine = frame[under(frame, run, ("runtime", "compiled", "kernels"))]
    return path.recorded(mine, name, label, options.batch_size, kernel_candidates(name, options))


def row_kernels(store: ResultsStore, options: RunOptions, run: RunConditions, name: str) -> str | None:
    """The kernels ``name``'s speed rows under ``run`` carry: the run's, or where a best-path
    probe chooses them, its stored choice's (None where no probe has chosen yet)."""
    if options.layout != "best" or len(kernel_candidates(name, options)) == 1:
        return run.kernels
    label = where(name, "speed", options)[0]
    choice = stored_choice(store, run, name, label, dataclasses.replace(options, force=False))
    return None if choice is None else choice.kernels


def held(store: ResultsStore, options: RunOptions, conditions: list[RunConditions], name: str,
         measurement: str) -> bool:
    """Whether the store holds this measurement under every one of ``conditions`` (never, with
    ``--force``): a paired speed measurement is held only under both of its kernels."""
    label, dataset = where(name, measurement, options)
    conditions = conditions if measurement == "speed" else conditions[:1]
    if measurement == "speed":
        kernels = row_kernels(store, options, conditions[0], name)
        if kernels is None:  # the kernels its rows carry are not known before its probe
            return False
        conditions = [dataclasses.replace(conditions[0], kernels=kernels), *conditions[1:]]
    if measurement == "accuracy":  # training records the layout it ran in: NCDHW unless channels-last
        conditions = [dataclasses.replace(c, layout="channels_last" if options.channels_last else "ncdhw")
                      for c in conditions]
    return not options.force and all(
        store.done(name, measurement, c, label, required_metrics(measurement, options), dataset)
        for c in conditions)
