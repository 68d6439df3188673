"""The machine's peak: the faster of a large dense matmul and a dense 3x3x3 conv in the run's
dtype, the roofline every model's achieved GMAC/s is set against (``peak_fraction``)."""

import functools
import math
import time

import torch
from torch import nn

from benchmarks.machine import environment
from benchmarks.measure.timing import time_step
from benchmarks.measure.workload import DTYPES


def peak_problem(device: str) -> tuple[int, tuple[int, ...]]:
    """(matmul side, dense conv input) large enough to reach the device's peak. On the CPU a
    2048^3 matmul (8.6 GMAC) and a 128 -> 128 3x3x3 conv on (2, 128, 8, 28, 28) (5.5 GMAC)
    saturate two to 64 cores; a GPU's tensor cores need an 8192^3 matmul (550 GMAC) and a
    16x larger conv input to stay busy long enough per call."""
    if device == "cuda":
        return 8192, (8, 128, 16, 56, 56)
    return 2048, (2, 128, 8, 28, 28)


# The dtypes a CPU multiplies natively, by the instruction sets (``environment.cpu_flags``'s
# names) that give them; fp32 and tf32 (fp32 on a CPU) always.
NATIVE_ON_CPU = {"fp32": (), "tf32": (), "bf16": ("AVX512-BF16", "AMX-BF16"), "fp16": ("AVX512-FP16", "AMX-FP16")}
# A dtype a CPU emulates may run reference kernels: a 2048^3 fp16 matmul took 64 s a call on one
# EPYC, and bf16 ran at under 1 GMAC/s on an AVX2 one. Its problem is fitted so that one call
# takes about this long at most.
PEAK_CALL_S = 0.5
MATMUL_SIDES = (128, 256, 512, 1024, 2048)
CONV_INPUTS = ((1, 128, 1, 14, 14), (1, 128, 1, 28, 28), (1, 128, 2, 28, 28), (1, 128, 4, 28, 28),
               (1, 128, 8, 28, 28), (2, 128, 8, 28, 28))


def _conv_macs(shape: tuple[int, ...]) -> int:
    return math.prod(shape) * 128 * 27  # 128 output channels, 3x3x3, padded to the same size


def runs_natively(device: str, dtype: str) -> bool:
    """Whether ``device`` multiplies ``dtype`` in hardware: a GPU every dtype the suite runs; a
    CPU fp32, and bf16 or fp16 where it has the instruction set."""
    if device != "cpu":
        return True
    needs = NATIVE_ON_CPU.get(dtype, ("?",))
    return not needs or bool(set(needs) & set(environment.cpu_flags()))


@functools.cache
def fitted_problem(device: str, dtype: str) -> tuple[int, tuple[int, ...], str]:
    """(matmul side, conv input, note): ``peak_problem`` where the device runs ``dtype``
    natively; where a CPU emulates it, the largest sizes whose one call is predicted to take at
    most ``PEAK_CALL_S``, grown from the smallest, each prediction scaled from a timed call of
    the size before it. Chosen once per process, so the peak before a sweep, after it, and
    around each timing is the same problem; the note names it where it is not full size."""
    n, conv_input = peak_problem(device)
    if runs_natively(device, dtype):
        return n, conv_input, ""
    torch_dtype = DTYPES[dtype]
    conv = nn.Conv3d(128, 128, 3, padding=1, bias=False).to(torch_dtype).eval()

    def matmul(side):
        a = torch.randn(side, side, dtype=torch_dtype)
        return lambda: torch.mm(a, a)

    def convolve(shape):
        x = torch.randn(shape, dtype=torch_dtype)
        return lambda: conv(x)

    side = _largest_fitting(MATMUL_SIDES, matmul, lambda s: s**3)
    shape = _largest_fitting(CONV_INPUTS, convolve, _conv_macs)
    if (side, shape) == (n, conv_input):
        return n, conv_input, ""
    return side, shape, (f"{dtype} is emulated on this CPU: fitted to a {side}^3 matmul and a "
                         f"{'x'.join(map(str, shape))} conv input, the same problem at both ends")


def _largest_fitting(sizes, step_for, macs_of):
    """The largest of ``sizes`` (ascending) whose call is predicted to fit ``PEAK_CALL_S``."""
    chosen = sizes[0]
    with torch.inference_mode():
        for small, big in zip(sizes, sizes[1:]):
            step = step_for(small)
            step()  # lazy initialisation out of the timed call
            started = time.perf_counter()
            step()
            if (time.perf_counter() - started) * macs_of(big) / macs_of(small) > PEAK_CALL_S:
                break
            chosen = big
    return chosen


def peak_gmacs_per_s(device: str, dtype: str, min_run_time: float = 1.0,
                     warm_s: float = 1.0) -> dict[str, float]:
    """The machine's dense rates in ``dtype``: a large matmul and a dense 3x3x3 conv
    (``fitted_problem``: full size where the device runs ``dtype`` natively; ``peak_with_note``
    also names the problem where it is not).

    The roofline every model is compared with is the faster of the two. A matmul alone is not
    enough: on this suite's AMD EPYC CPU, MKL's sgemm takes its AVX2 path (~110 GMAC/s on two
    cores) while oneDNN's convolutions use AVX-512 (~255 GMAC/s), so dense 3D CNNs read 200%
    of a matmul "peak". A peak is the best the machine sustains, so each takes the fastest
    timed block after a warm-up (``warm_s``; a cold median read 25% low here). A brief check
    around one model's timing passes a shorter ``warm_s`` and ``min_run_time``."""
    return peak_with_note(device, dtype, min_run_time, warm_s)[0]


def peak_with_note(device: str, dtype: str, min_run_time: float = 1.0,
                   warm_s: float = 1.0) -> tuple[dict[str, float], str]:
    """``peak_gmacs_per_s`` and the note of ``fitted_problem`` ("" at full size)."""
    torch_dtype = DTYPES[dtype]
    n, conv_input, note = fitted_problem(device, dtype)
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    conv = nn.Conv3d(128, 128, 3, padding=1, bias=False).to(device, torch_dtype).eval()
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = torch.randn(*conv_input, device=device, dtype=torch_dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = {}
    with torch.inference_mode():
        for kind, step, macs in (("matmul", lambda: torch.mm(a, b), n**3),
                                 ("conv", lambda: conv(x), _conv_macs(conv_input))):
            warm_until = time.perf_counter() + warm_s
            while time.perf_counter() < warm_until:
                step()
            result = time_step(step, sync, min_run_time, warmup=1)
            rates[kind] = macs / min(result.times) / 1e9
    return rates, note


