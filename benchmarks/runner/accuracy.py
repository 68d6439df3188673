"""The motion benchmark's protocol: every video model trained for the same time budget on the
built-in motion benchmark, the budget given as clips so a busy machine cannot change the result.

A probe phase first measures every model's training rate with the machine's peak just after it;
each model then trains for ``rate x budget x (the phase's best peak / the peak at its probe)``
clips, the clips a quiet machine reaches in the budget. ``--epochs`` trains every model the same
epochs instead; ``--quick`` keeps a plain clock budget (a smoke test of the path)."""

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.machine import disturbance
from benchmarks.machine.contention import Contention, CpuMeter
from benchmarks.measure import peak
from benchmarks.runner.options import MOTION_CLIP, RunOptions
from benchmarks.store import ResultsStore, RunConditions, under
from benchmarks.training import PRESETS, Config, probe_rate, train

QUICK_MOTION = dict(batch_size=4, train_size=32, val_size=12)


@dataclass
class Probes:
    """Each probed model's (training clips/s, the machine's peak GMAC/s just after), and what
    other processes used during its probe."""

    rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    loads: dict[str, Contention] = field(default_factory=dict)

    @property
    def best_peak(self) -> float:
        return max(p for _, p in self.rates.values())

    @property
    def worst_peak(self) -> float:
        return min(p for _, p in self.rates.values())

    def all_disturbed(self) -> bool:
        return bool(self.loads) and all(load.disturbed for load in self.loads.values())


def accuracy_config(name: str, options: RunOptions, clip_budget: int | None = None, note: str = "") -> Config:
    """The motion-benchmark training run of ``name``: the motion preset, at the reduced clip,
    for the same time budget as every other model, given as ``clip_budget`` clips (or
    ``--epochs``, the equal-epoch protocol)."""
    preset = {k: v for k, v in PRESETS["motion"].items() if k != "epochs"}
    preset |= QUICK_MOTION if options.quick else dict(train_size=600, val_size=120)
    budget = ({} if options.epochs else dict(time_budget=options.train_budget) if options.quick
              else dict(clip_budget=clip_budget, clip_budget_of=options.train_budget, budget_note=note))
    return Config(model=name, dataset="motion", clip=options.clip or MOTION_CLIP, seed=options.seed,
                  results=options.results, out=str(Path(options.results) / "checkpoints"),
                  epochs=options.epochs or 1000, stock_kernels=not options.suite_kernels,
                  channels_last=options.channels_last, **budget, **preset)


def probe_phase(names: list[str], options: RunOptions) -> Probes:
    """Each model's training rate measured with the machine's peak just after it, all before any
    model trains, and what other processes used during each probe."""
    probes = Probes()
    for name in names:
        with CpuMeter() as meter:
            rate = probe_rate(accuracy_config(name, options), seconds=3.0)
        rates = peak.peak_gmacs_per_s(options.device, options.dtype, min_run_time=0.2)
        probes.rates[name], probes.loads[name] = (rate, max(rates.values())), meter.result
    return probes


def clip_budget(name: str, options: RunOptions, probes: Probes, conditions: RunConditions) -> tuple[int, str]:
    """The time budget as clips: the model's probed training rate, scaled by the best peak of
    the probe phase over the peak at its probe, so a load that came and went during the probes
    does not shrink one model's budget. A whole phase far below the best peak recorded under
    these conditions (another job all along, or a slower host of the same name) is flagged, not
    scaled: the store cannot tell the two apart. So is a phase in which other processes took CPU
    during every probe (a steady load, seen even with nothing recorded)."""
    rate, at_probe = probes.rates[name]
    best_now = probes.best_peak
    frame = ResultsStore(options.results).frame()
    # the machine's peak is a dense conv's: the kernels condition plays no part in it
    recorded = frame[(frame["model"] == "_machine") & (frame["metric"] == "peak_gmacs_per_s")
                     & (frame["status"] == "ok") & under(frame, conditions, ("kernels", "layout"))]["value"]
    best_recorded = max([best_now, *recorded.tolist()])
    clips = max(accuracy_config(name, options).batch_size, round(rate * options.train_budget * best_now / at_probe))
    note = (f"{options.train_budget:g} s at {rate:.2f} clips/s probed, x{best_now / at_probe:.2f} for the load "
            f"during its probe (peak {at_probe:.0f}, the phase's best {best_now:.0f} GMAC/s)")
    if probes.all_disturbed():
        note = f"busy machine: during every probe {probes.loads[name].describe()}; " + note
    elif best_now < disturbance.BUSY_SHARE * best_recorded:
        note = (f"busy machine (or a slower host of the same name): the run's best peak was "
                f"{best_now:.0f} against {best_recorded:.0f} GMAC/s recorded; " + note)
    return clips, note


def measure_accuracy(name: str, options: RunOptions, probes: Probes, conditions: RunConditions) -> None:
    """Train and evaluate on the motion benchmark; ``train`` writes its own rows (curves, top-1,
    the clip budget, and the epochs and clips each model reached)."""
    clips, note = (None, "") if options.epochs or options.quick else clip_budget(name, options, probes, conditions)
    train(accuracy_config(name, options, clips, note))
