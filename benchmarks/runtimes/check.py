"""A runtime's outputs against eager's on a fixed input, before it is timed: a runtime that
computes something else is an error row, never a speed. The rows keep the agreement for the
record: the largest absolute difference, that difference against the largest logit, and how
often the top-1 class is the same."""

import torch

from benchmarks.store import Measurement

# the largest |runtime - eager| a run accepts, as a fraction of eager's largest |logit|: fp32
# reorders sums (1e-5 seen), half precisions round every operand (bf16 keeps 8 bits of mantissa)
TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 6e-2, "fp16": 1e-2}


def agreement(reference: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """max |got - reference|, that over max |reference|, and the top-1 agreement in %."""
    if got.shape != reference.shape:
        raise ValueError(f"outputs of shape {tuple(got.shape)}, eager's are {tuple(reference.shape)}")
    difference = (got - reference).abs().max().item()
    scale = reference.abs().max().item() or 1.0
    same = (got.argmax(1) == reference.argmax(1)).float().mean().item() * 100
    return {"max_abs": difference, "relative": difference / scale, "top1": same}


def check_rows(name: str, runtime: str, dtype: str, label: str, reference: torch.Tensor,
               got: torch.Tensor) -> tuple[list[Measurement], str]:
    """(the agreement rows, why the runtime is refused: "" where it agrees within ``TOLERANCE``)."""
    found = agreement(reference, got)
    tolerance = TOLERANCE[dtype]
    note = (f"{runtime} {dtype} against eager fp32 on PyTorch's kernels, a fixed input of "
            f"{reference.shape[0]} clips; tolerance {tolerance:g} of the largest logit")
    common = dict(phase="check", batch_size=reference.shape[0], clip=label, note=note)
    rows = [Measurement(name, "speed", "output_max_abs_diff", found["max_abs"], "", **common),
            Measurement(name, "speed", "output_rel_diff", found["relative"], "ratio", **common),
            Measurement(name, "speed", "output_top1_agreement", found["top1"], "%", **common)]
    finite = bool(torch.isfinite(got).all())
    if not finite or found["relative"] > tolerance:
        what = "non-finite outputs" if not finite else f"a difference of {found['relative']:.2%} of the largest logit"
        return rows, f"{runtime} disagrees with eager: {what} (tolerance {tolerance:.1%})"
    return rows, ""
