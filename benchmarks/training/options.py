"""``train.py``'s command line: parsed into one ``Config`` per run (``--split all`` and
``--seeds`` expand into several); a value that cannot mean anything is one line and exit 2."""

import argparse

import models
from benchmarks.data import datasets
from benchmarks.measure.workload import parse_clip
from benchmarks.training.config import (
    AMP_DTYPES,
    PRESETS,
    SPLIT_DATASETS,
    Config,
    SettingsError,
    check_fits,
    check_kind,
    check_values,
)
from models import kernels

DESCRIPTION = "Train and evaluate a registered model on a video or image dataset."

def parse_args(argv=None) -> list[Config]:
    """One Config per run: ``--split all`` and ``--seeds`` expand into several."""
    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION)
    p.add_argument("--model", required=True)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a file or module whose @models.register_model builders add models")
    p.add_argument("--dataset", default="motion",
                   choices=("motion", *datasets.LAYOUTS, *datasets.IMAGE_LAYOUTS))
    p.add_argument("--root", help="dataset folder (not needed for motion)")
    p.add_argument("--split", default="1", help="1, 2, 3 or all (UCF-101 and HMDB-51)")
    p.add_argument("--seeds", help="comma-separated seeds, one run each (e.g. 0,1,2)")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="the authors' recipe (default: motion, imagenet, or finetune)")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("seed", int),
                       ("test-clips", int), ("test-crops", int), ("train-size", int),
                       ("val-size", int), ("time-budget", float), ("workers", int),
                       ("warmup-epochs", float), ("backbone-lr-mult", float)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--schedule", choices=("step", "cosine"))
    p.add_argument("--clip", help="T,H,W (images: H,W)")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), help="mixed precision (fp16: CUDA only)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--stock-kernels", action="store_true",
                   help="MF-Net's fiber convs on PyTorch's kernels, not the suite's (the default "
                        "on a CPU, fp32, eager)")
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint as it is")
    p.add_argument("--checkpoint", help="weights to start from (or to evaluate)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/<run>/last.pt")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="runs", help="checkpoint folder")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the model builder, e.g. dropout=0")
    a = p.parse_args(argv)
    try:
        return expand(a)
    except (SettingsError, ValueError) as exc:
        p.exit(2, f"train.py: error: {exc}\n")

def expand(a: argparse.Namespace) -> list[Config]:
    kernels.check_settings()  # an unreadable MFNET_FIBER_KERNEL or MFNET_LARGE_BLOCK_POOL stops here
    for target in a.imports:
        models.import_models(target)
    spec = models.get_spec(a.model)  # ValueError naming the closest names
    preset = a.preset or ("motion" if a.dataset == "motion" else
                          "imagenet" if a.dataset == "imagenet" else "finetune")
    values = {"model": a.model, "dataset": a.dataset, "root": a.root, "preset": preset,
              **PRESETS[preset]}
    for key in ("epochs", "batch_size", "lr", "seed", "test_clips", "test_crops", "train_size",
                "val_size", "time_budget", "workers", "warmup_epochs", "backbone_lr_mult",
                "schedule", "amp"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    if a.clip:
        clip = parse_clip(a.clip, image=a.dataset == "imagenet")
        if clip[1] != clip[2]:
            raise SettingsError(f"--clip {a.clip}: crops are square, so H and W must be equal")
        values["clip"] = clip
    bad_args = [arg for arg in a.model_arg if "=" not in arg]
    if bad_args:
        raise SettingsError(f"--model-arg takes KEY=VALUE, got {bad_args[0]!r}")
    values["model_args"] = {k: _number(v) for k, v in (arg.split("=", 1) for arg in a.model_arg)}
    if a.dataset != "motion" and not a.root:
        raise SettingsError(f"--dataset {a.dataset} needs --root")
    if a.eval_only and not a.checkpoint:
        raise SettingsError("--eval-only needs --checkpoint: there are no weights to evaluate")
    check_values(values)
    check_kind(spec, a.dataset)
    splits = parse_splits(a.split, a.dataset)
    try:
        seeds = ([int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds
                 else [values.pop("seed", 0)])
    except ValueError:
        raise SettingsError(f"--seeds takes comma-separated integers, got {a.seeds!r}") from None
    values.pop("seed", None)
    if not seeds:
        raise SettingsError("--seeds is empty")
    common = dict(eval_only=a.eval_only, checkpoint=a.checkpoint, resume=a.resume, results=a.results,
                  out=a.out, channels_last=a.channels_last, compile=a.compile,
                  stock_kernels=a.stock_kernels)
    configs = [Config(**values, **common, split=split, seed=seed) for split in splits for seed in seeds]
    check_fits(configs[0], spec)
    return configs

def parse_splits(text: str, dataset: str) -> list[int]:
    if text == "all":
        if dataset not in SPLIT_DATASETS:
            raise SettingsError(f"--split all: {dataset} has one split; only "
                                f"{' and '.join(SPLIT_DATASETS)} have three")
        return [1, 2, 3]
    try:
        return [int(text)]
    except ValueError:
        raise SettingsError(f"--split takes 1, 2, 3 or all, got {text!r}") from None

def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
