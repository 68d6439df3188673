"""The two steps every measurement times or sizes, defined once: an inference step and a
training step (forward + cross-entropy + backward + SGD step), as in timm's benchmark.py."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

import models
from benchmarks.measure.cost import input_shape
from models import kernels

# tf32: fp32 tensors with TensorFloat-32 matmuls and convs (CUDA only; see runtime.gpu_policy)
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the dtypes that run under autocast


@dataclass(frozen=True)
class Setup:
    """How to run: the same for every model in a run."""

    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (the latter two by autocast)
    channels_last: bool = False
    compiled: bool = False  # torch.compile (inductor), named as the results column is
    # fiber convs (grouped (1|3)x3x3) and BatchNorm + ReLU on the suite's kernel where it runs,
    # MF-Net's default; False: PyTorch's own, as footnote 5 found it (results: kernels)
    fiber_kernel: bool = True


class Workload:
    """One model ready to run under ``setup`` at a clip size (None: the spec's input)."""

    def __init__(self, name: str, setup: Setup, clip: tuple[int, ...] | None = None,
                 num_classes: int | None = None, **model_kwargs):
        self.name, self.setup, self.clip = name, setup, clip
        torch.manual_seed(0)
        model = models.create_model(name, num_classes=num_classes, **model_kwargs).to(setup.device)
        self.num_classes = models.get_spec(name).num_classes if num_classes is None else num_classes
        self.video = len(input_shape(name, clip)) == 5
        if setup.channels_last:
            model = model.to(memory_format=self.memory_format)
        kernels.use_kernels(model, setup.fiber_kernel)
        self.model = torch.compile(model) if setup.compiled else model
        self.eager_model = model

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.video else torch.channels_last

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(input_shape(self.name, self.clip, batch), device=self.setup.device)
        if self.setup.channels_last:
            x = x.contiguous(memory_format=self.memory_format)
        y = torch.randint(0, self.num_classes, (batch,), device=self.setup.device)
        return x, y

    def autocast(self):
        if self.setup.dtype not in AUTOCAST:
            return nullcontext()
        return torch.autocast(self.setup.device, dtype=AUTOCAST[self.setup.dtype])

    def infer_step(self, x: torch.Tensor) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast(), self.freezing():
            self.model(x)

    def freezing(self):
        """Compiled inference freezes the weights into the graph, so inductor can fold
        BatchNorm into convs and prepack weights (its recommended CPU inference setting).
        Measured here at batch 1: MF-Net 193 ms compiled without freezing (eager: 134 ms),
        111 ms with it. Training steps compile without it."""
        if not self.setup.compiled:
            return nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def make_train_step(self):
        """A closure running one training step; the optimizer is made once, outside timing."""
        self.model.train()
        optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss = loss_fn(self.model(x), y)
            loss.backward()
            optimizer.step()

        return train_step

    def synchronize(self) -> None:
        if self.setup.device == "cuda":
            torch.cuda.synchronize()


MIN_SIDE = 16  # px; below this no model in the zoo has a meaningful feature map


def parse_clip(text: str, *, image: bool = False) -> tuple[int, int, int]:
    """``T,H,W`` (or ``TxHxW``; with ``image``, also ``H,W`` meaning one frame) -> (T, H, W);
    ``ValueError`` with a one-line message for anything else. The one clip parser of
    ``run.py``, ``train.py`` and ``op_profile.py``."""
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if image and len(values) == 2:
        values = (1, *values)
    if len(values) != 3:
        raise ValueError(f"--clip takes T,H,W as three integers (e.g. 16,112,112), got {text!r}")
    t, h, w = values
    if t < 1 or h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"--clip {text} is too small: need T >= 1 and H, W >= {MIN_SIDE}")
    return values
