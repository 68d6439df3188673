"""A run from start to finish: the run's conditions and environment, the probe phase of the
motion benchmark, every (model, measurement) of the plan in turn (claimed first, skipped where
the store holds it), the machine's peak before the first timing and after the last, and the
summaries. The command's exit status: 0, 1 where rows are errors."""

import dataclasses
import datetime as dt
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import runtimes
from benchmarks.machine import disturbance, environment, runtime
from benchmarks.measure.workload import Setup
from benchmarks.runner import accuracy, plan
from benchmarks.runner.measure import Context, brief_peak, job_memory_row, measure_isolated, peak_rows
from benchmarks.runner.options import MEASUREMENTS, MOTION_CLIP, RunOptions
from benchmarks.runner.summary import print_accuracy_summary, print_summary
from benchmarks.store import Measurement, ResultsStore, RunConditions, new_run_id


class RunWriter:
    """Appends a run's rows under its conditions. The environment sidecar goes with the run's
    first rows: a run that skips everything it was asked for (all held already) leaves no file
    behind, so a clean checkout stays clean."""

    def __init__(self, options: RunOptions, store: ResultsStore):
        self.store, self.run_id = store, new_run_id()
        env = environment.collect(options.device) | {"malloc": runtime.keep_freed_memory()}
        if options.device == "cuda":
            env["gpu_policy"] = runtime.gpu_policy(options.dtype)
        self.conditions = RunConditions(self.run_id, options.device, env["device_name"], options.dtype,
                                        options.layout, options.compile, env["threads"],
                                        "suite" if options.suite_kernels else "stock", options.runtime)
        self.sidecar = env | {"quick": options.quick, "batch_size": options.batch_size, "argv": list(options.argv),
                              "runtime": options.runtime}
        if runtimes.exported(options.runtime):
            self.sidecar["runtime_version"] = runtimes.version(options.runtime)
        if options.paired_models:
            self.sidecar["speed_kernels"] = (f"{', '.join(options.paired_models)}: stock and suite, timed in "
                                             "alternating rounds in this process (rows of both under this run id)")
        self.sidecar_written = False

    def save(self, rows: list[Measurement]) -> None:
        first = not self.sidecar_written
        if first:
            self.store.write_environment(self.run_id, self.sidecar)
            self.sidecar_written = True
        try:
            self.store.append(rows, self.conditions, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        except OSError:
            if first:  # a full disk: no sidecar of a run with no rows left behind
                self.store.remove_environment(self.run_id)
                self.sidecar_written = False
            raise


class Sweep:
    """One run's state: its store and writer, the conditions it measures under (and, paired,
    the stock ones timed beside them), the machine's peak and watch, and its counts."""

    def __init__(self, options: RunOptions, console: Console):
        self.options, self.console = options, console
        self.store = ResultsStore(options.results)
        self.store.check_writable()
        self.writer = RunWriter(options, self.store)
        stock = dataclasses.replace(self.writer.conditions, kernels="stock")
        setup = Setup(options.device, options.dtype, options.channels_last, options.compile, options.suite_kernels)
        self.context = Context(self.writer.conditions, stock, options.paired_models, setup, self.store)
        self.errors = self.claimed_elsewhere = self.held = 0

    def run(self) -> int:
        todo = plan.measurement_plan(self.options)
        self.probe(todo)
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("models", total=len(todo))
            for name, measurement in todo:
                progress.update(task, description=f"{name}: {measurement}")
                self.measure(name, measurement, progress.console)
                progress.advance(task)
        self.finish()
        return 1 if self.errors else 0

    def probe(self, todo: list[tuple[str, str]]) -> None:
        """The motion benchmark's probe phase, where its clip budgets need one: every model's
        training rate first, so budgets share one view of the machine."""
        options, conditions = self.options, [self.writer.conditions]
        if options.epochs or options.quick:
            return
        names = [n for n, m in todo if m == "accuracy" and not plan.held(self.store, options, conditions, n, m)]
        if not names:
            return
        self.console.print(f"probing the training rate of {len(names)} model(s) for their clip budgets")
        probes = self.context.probes = accuracy.probe_phase(names, options)
        if probes.worst_peak < disturbance.BUSY_SHARE * probes.best_peak:
            self.console.print(f"[yellow]warning: the machine's peak varied from {probes.worst_peak:.0f} to "
                               f"{probes.best_peak:.0f} GMAC/s during the probes; budgets are scaled to the best")
        if probes.all_disturbed():
            self.console.print(f"[yellow]warning: busy machine: during every probe "
                               f"{list(probes.loads.values())[-1].describe()}; the clip budgets are flagged in "
                               "their rows and in the report")

    def measure(self, name: str, measurement: str, console) -> None:
        """One (model, measurement), unless the store holds it or another run on the store is
        measuring it: claimed first, then looked for again, since that run may have finished
        between the two looks."""
        options, conditions = self.options, [self.writer.conditions, *self.context.also(name)]
        if plan.held(self.store, options, conditions, name, measurement):
            self.held += 1
            return
        label, dataset = plan.where(name, measurement, options)
        with self.store.claim(name, measurement, label, dataset, self.writer.conditions) as other:
            if other:
                console.print(f"[yellow]{name} {measurement}: skipped, another run is measuring it ({other})")
                self.claimed_elsewhere += 1
                return
            if plan.held(self.store, options, conditions, name, measurement):  # measured meanwhile
                self.held += 1
                return
            if measurement == "speed" and self.context.peak is None:
                self.start_watch()
            rows, failed = measure_isolated(name, measurement, options, label, self.context, console)
            self.errors += failed
            if rows:
                self.writer.save(rows)

    def start_watch(self) -> None:
        """The machine's peak just before the run's first timing (a run whose timings are all
        stored already records none), and the watch around every timing."""
        self.context.peak, rows = peak_rows(self.options, "start", None)
        self.writer.save(rows)
        self.context.watch = disturbance.MachineWatch(self.context.peak, brief_peak(self.options))

    def finish(self) -> None:
        options, console, start = self.options, self.console, self.context.peak
        if start:  # shared and virtual machines drift: measure the roofline again
            end, rows = peak_rows(options, "end", start)
            self.writer.save(rows)
            if end and abs(end / start - 1) > 0.15:
                console.print(f"[yellow]warning: the machine's peak rate drifted {end / start - 1:+.0%} during "
                              "the sweep; timings from this run are less comparable")
        if self.writer.sidecar_written and options.device == "cpu":  # what the job itself needed
            self.writer.save([job_memory_row()])
        conditions = self.writer.conditions
        if any(m in MEASUREMENTS[:3] for m in options.measure):
            chosen = {name: plan.row_kernels(self.store, options, conditions, name) for name in options.models}
            print_summary(console, self.store, options.models, conditions, options.clip, chosen)
        if "accuracy" in options.measure:
            print_accuracy_summary(console, self.store, options.accuracy_models, conditions,
                                   "x".join(map(str, options.clip or MOTION_CLIP)), plan.accuracy_protocol(options))
        if self.held:
            console.print(f"{self.held} measurement(s) were in {self.store.root} already under these conditions "
                          "and were not measured again (--force measures them again)")
        if self.claimed_elsewhere:
            console.print(f"{self.claimed_elsewhere} measurement(s) were left to another run on "
                          f"{self.store.root}; its rows land in the same store")
        if self.errors:
            console.print(f"[red]{self.errors} measurement(s) failed; see rows with status=error in {self.store.csv}")


def console_for(stream=sys.stdout) -> Console:
    # rich wraps to 80 columns when stdout is not a terminal (CI logs, `> run.log`), which
    # truncated the summary's numbers to "7.9…"; a wide console keeps them whole
    return Console(width=None if stream.isatty() else 160)
