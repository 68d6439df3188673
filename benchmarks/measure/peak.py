"""The machine's peak: the faster of a large dense matmul and a dense 3x3x3 conv in the run's
dtype, the roofline every model's achieved GMAC/s is set against (``peak_fraction``)."""

import math
import time

import torch
from torch import nn

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


# One peak call may take this long at most. Half precision on a CPU without native support
# runs reference kernels: a 2048^3 fp16 matmul took 64 s a call on one EPYC, and bf16 ran at
# under 1 GMAC/s on an AVX2 one. The problem then shrinks until a call fits, and says so.
PEAK_CALL_S = 0.5
MATMUL_SIDES = (2048, 1024, 512, 256, 128)
CONV_INPUTS = ((2, 128, 8, 28, 28), (1, 128, 8, 28, 28), (1, 128, 4, 28, 28), (1, 128, 2, 28, 28),
               (1, 128, 1, 28, 28), (1, 128, 1, 14, 14))


def _conv_macs(shape: tuple[int, ...]) -> int:
    return math.prod(shape) * 128 * 27  # 128 output channels, 3x3x3, padded to the same size


def fitted_problem(device: str, dtype: str) -> tuple[int, tuple[int, ...], str]:
    """``peak_problem``, shrunk on a CPU until one call of each is predicted (from a timed call
    of the smallest size, scaled by the multiply-adds) to take at most ``PEAK_CALL_S``; and a
    note saying so when it was shrunk."""
    n, conv_input = peak_problem(device)
    if device == "cuda":  # every dtype has tensor-core kernels; a first call times set-up
        return n, conv_input, ""
    torch_dtype = DTYPES[dtype]
    a = torch.randn(MATMUL_SIDES[-1], MATMUL_SIDES[-1], dtype=torch_dtype)
    conv = nn.Conv3d(128, 128, 3, padding=1, bias=False).to(torch_dtype).eval()
    x = torch.randn(CONV_INPUTS[-1], dtype=torch_dtype)
    with torch.inference_mode():
        torch.mm(a, a), conv(x)  # lazy initialisation out of the timed call
        started = time.perf_counter()
        torch.mm(a, a)
        per_mac_mm = (time.perf_counter() - started) / MATMUL_SIDES[-1] ** 3
        started = time.perf_counter()
        conv(x)
        per_mac_conv = (time.perf_counter() - started) / _conv_macs(CONV_INPUTS[-1])
    side = next((s for s in MATMUL_SIDES if per_mac_mm * s**3 <= PEAK_CALL_S), MATMUL_SIDES[-1])
    shape = next((s for s in CONV_INPUTS if per_mac_conv * _conv_macs(s) <= PEAK_CALL_S),
                 CONV_INPUTS[-1])
    if (side, shape) == (n, conv_input):
        return n, conv_input, ""
    return side, shape, (f"shrunk to a {side}^3 matmul and a {'x'.join(map(str, shape))} conv "
                         f"input: a full-size {dtype} call would take "
                         f"{max(per_mac_mm * n**3, per_mac_conv * _conv_macs(conv_input)):.0f} s here")


def peak_gmacs_per_s(device: str, dtype: str, min_run_time: float = 1.0,
                     warm_s: float = 1.0) -> dict[str, float]:
    """The machine's dense rates in ``dtype``: a large matmul and a dense 3x3x3 conv
    (``peak_problem``, shrunk by ``fitted_problem`` where one call would take too long;
    ``peak_with_note`` also says whether it was).

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


