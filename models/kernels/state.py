"""What the kernels run on in this process, for a run's record and a run's conditions."""

from models.kernels import build, paths
from models.kernels.ops import bf16


def status(load: bool = True) -> str:
    """What MF-Net's convs run on here, for a run's environment record. ``load=False`` reports
    without building: a run whose models never asked for the kernels does not pay the first
    build (about a minute) to say so."""
    if not load and not build.loaded():
        return "not loaded: no fiber conv or fused BatchNorm + ReLU has run in this process"
    if build.extension() is None:
        return f"stock PyTorch kernels: {build.why()}"
    taken = paths.path()
    # BatchNorm + ReLU (AVX2 code) and the pointwise convs (the path's own build) run on every
    # channels-last path
    return (f"suite kernel ({taken})"
            + ("; BatchNorm + ReLU fused; pointwise convs fused, and on the kernel in training"
               if taken in paths.CL_PATHS else "")
            + f"; bf16 inference: {bf16_status()}"
            + ("; large blocks pooled" if build.pooled() else ""))


def bf16_status() -> str:
    """What bf16 autocast runs a multi-fiber unit on here, for a run's record."""
    if paths.bf16_path():
        return f"oneDNN convs with folded epilogues, rows on {paths.bf16_path()}"
    return "no native bf16: units on the fp32 kernels"


def why_not(device: str, dtype: str = "fp32", compiled: bool = False) -> str:
    """Why MF-Net's convs cannot run on the kernels under a run's conditions, or "" where they
    do (then the library is built now, never inside a timing). MF-Net is channels-last inside,
    and its channels-last convs and fused BatchNorm + ReLU need a channels-last path. bf16 (by
    autocast) runs units on oneDNN's bf16 convs and the library's bf16 rows in inference,
    BatchNorm + ReLU on those rows in training, and units on the fp32 kernels where the CPU has
    no native bf16."""
    if device != "cpu":
        return "it is a CPU kernel (on a GPU the fiber convs run on cuDNN)"
    if compiled:  # a compiled graph runs PyTorch's convs
        return "it is an eager kernel (compiled graphs run PyTorch's convs)"
    if dtype not in ("fp32", "bf16"):
        return f"it has fp32 and bf16 paths, not {dtype}"
    if build.extension() is None:
        return build.why()
    if not paths.channels_last_path():
        return f"this CPU has no AVX2 + FMA, or {paths.SWITCH}=scalar: channels-last convs run on PyTorch's"
    if dtype == "bf16" and not bf16.supported():
        return "this PyTorch's oneDNN has no bf16 convs"
    if dtype == "bf16":
        paths.bf16_path()  # its self-check runs now, never inside a timing
    return ""


def check_settings() -> None:
    """The environment's switches read now, so a value that means nothing stops a command with
    one line (ValueError) before it measures anything."""
    paths.wish()
    build.pool_cap()
