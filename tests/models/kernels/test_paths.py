"""The instruction-set paths (models/kernels/paths.py, csrc/isa.*): which one runs, the switch
that picks one, the AVX-512 path's code checked here on pairs of AVX2 registers, the check that
keeps a disagreeing AVX-512 build from being used, and AVX-512 code kept out of other paths."""

import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models import kernels
from models.kernels import build, paths, selfcheck
from models.kernels.modules import FiberConv3d
from models.kernels.ops import fiber
from tests.models.kernels.helpers import check_against_reference, cl, close
from tests.paths import REPO as ROOT


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_cpu_s_best_path_runs_unless_the_switch_picks_another(monkeypatch):
    monkeypatch.delenv(paths.SWITCH, raising=False)
    best = "avx512" if "avx512f" in cpu_flags() else "avx2"
    assert kernels.isa() == best and kernels.status().startswith(f"suite kernel ({best})")
    assert paths.table().name == best and paths.table().lanes == (16 if best == "avx512" else 8)
    monkeypatch.setenv(paths.SWITCH, "avx2")  # what a CPU without AVX-512 gets
    assert kernels.isa() == "avx2" and kernels.status().startswith("suite kernel (avx2); BatchNorm + ReLU fused")
    monkeypatch.setenv(paths.SWITCH, "avx512-emulated")
    assert kernels.isa() == "avx512-emulated" and paths.table().lanes == 16
    monkeypatch.setenv(paths.SWITCH, "scalar")
    assert kernels.isa() == "scalar" and kernels.why_not("cpu")


@pytest.mark.skipif("avx512f" in cpu_flags(), reason="this CPU has AVX-512")
def test_asking_for_avx512_on_a_cpu_without_it_gets_avx2_and_says_so_once(monkeypatch):
    monkeypatch.setenv(paths.SWITCH, "avx512")
    monkeypatch.setattr(build, "_loaded", {**build._loaded})  # the "said once" record starts empty
    with pytest.warns(UserWarning, match="avx512: this CPU cannot run it; fiber convs take the avx2 path"):
        assert paths.path() == "avx2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert paths.path() == "avx2"
    with pytest.raises(RuntimeError, match="no channels-last path avx512 on this CPU"):
        build.extension().isa("avx512")


def test_a_path_name_that_means_nothing_is_refused_by_the_library_in_one_line():
    with pytest.raises(RuntimeError, match="no channels-last path sse"):
        build.extension().isa("sse")
    with pytest.raises(TypeError):  # an op is given a table, never a name
        build.extension().pack_cl(torch.randn(4, 2, 3, 3, 3), 2, "avx2")


@pytest.mark.slow
def test_a_switch_value_that_means_nothing_is_one_line_everywhere(monkeypatch):
    monkeypatch.setenv(paths.SWITCH, "avx1024")
    with pytest.raises(ValueError, match="MFNET_FIBER_KERNEL='avx1024': use off, scalar, avx2, avx512, "
                                         "avx512-emulated"):
        paths.path()
    env = {**os.environ, paths.SWITCH: "fast"}
    for cmd in (["benchmarks/run.py", "--quick", "--models", "mfnet", "--measure", "cost"],
                ["benchmarks/train.py", "--model", "mfnet", "--dataset", "motion"]):
        out = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "MFNET_FIBER_KERNEL='fast'" in out.stderr and "Traceback" not in out.stderr


def test_the_avx512_path_s_code_equals_pytorch_forward_and_backward(monkeypatch):
    """The AVX-512 build's register blocks (16 lanes, up to 24 accumulators, 12 channels at
    once in the planar form) on pairs of AVX2 registers: random shapes and strides, forward and
    both gradients (the input's runs the forward's code too)."""
    monkeypatch.setenv(paths.SWITCH, "avx512-emulated")
    rng = random.Random(2)
    for _ in range(20):
        groups = rng.choice([1, 2, 4])
        cin_g, kt = rng.randint(1, 20), rng.choice([1, 3])
        cout_g = rng.choice([1, 3, 5, 6, 7, 12, 16, 17, 24, 33, 48, 50])
        stride = rng.choice([(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 2)])
        shape = (rng.randint(1, 2), groups * cin_g, rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 70))
        check_against_reference(cl(torch.randn(shape)), torch.randn(groups * cout_g, cin_g, kt, 3, 3), groups,
                                stride)


def test_mfnet_on_the_avx512_path_s_code_equals_the_reference_path(monkeypatch):
    """Every MF-Net conv on the kernels, with BatchNorm + ReLU folded in, on the AVX-512 blocking."""
    torch.manual_seed(0)
    reference = models.create_model("mfnet", channels_last=False).eval()
    for bn in (m for m in reference.modules() if isinstance(m, nn.BatchNorm3d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    fast = models.create_model("mfnet").eval()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 8, 112, 112)
    monkeypatch.setenv(paths.SWITCH, "avx512-emulated")
    with torch.inference_mode():
        close(fast(x), reference(x))


class Simulated:
    """The real library on a CPU with AVX-512, simulated: its best path is avx512, whose table
    is the AVX-512 blocking (on AVX2 registers here), or one whose ``wrong`` op is off by a little."""

    def __init__(self, real, wrong: str, checked: list):
        self.real, self.wrong, self.checked = real, wrong, checked
        self.fake = real.isa("avx512-emulated")

    def __getattr__(self, name):
        return getattr(self.real, name)

    def best_path(self, want):
        return "avx2" if want == "avx2" else "avx512"

    def isa(self, name):
        return FakeAvx512(self.fake) if name == "avx512" else self.real.isa(name)

    def _table(self, isa):
        return isa.table if isinstance(isa, FakeAvx512) else isa

    def _off(self, op, isa, out):
        if isinstance(isa, FakeAvx512) and self.wrong == op:
            return [t * 1.001 for t in out] if isinstance(out, list) else out * 1.001
        return out

    def pack_cl(self, weight, groups, isa, turned=False):
        return self.real.pack_cl(weight, groups, self._table(isa), turned)

    def forward_cl(self, x, packed, cout_g, stride, isa, scale=None, shift=None, residual=None):
        if isinstance(isa, FakeAvx512):
            self.checked.append(cout_g)
        y = self.real.forward_cl(x, packed, cout_g, stride, self._table(isa), scale, shift, residual)
        return self._off("fiber", isa, y)

    def grad_weight_cl(self, x, grad, groups, kt, stride, isa, scale=None, shift=None):
        return self._off("weight gradient", isa,
                         self.real.grad_weight_cl(x, grad, groups, kt, stride, self._table(isa), scale, shift))

    def pack_pointwise(self, weight, isa, transposed=False):
        return self.real.pack_pointwise(weight, self._table(isa), transposed)

    def grad_weight_pointwise(self, x, grad, stride, isa, scale=None, shift=None):
        return self._off("pointwise weight gradient", isa,
                         self.real.grad_weight_pointwise(x, grad, stride, self._table(isa), scale, shift))

    def bn_pointwise_backward(self, *args):
        *rest, isa, weight = args
        return self._off("pointwise backward", isa, self.real.bn_pointwise_backward(*rest, self._table(isa), weight))

    def pointwise_cl(self, *args, isa):
        return self._off("pointwise", isa, self.real.pointwise_cl(*args, isa=self._table(isa)))

    def multiplexer_cl(self, *args):
        return self.real.multiplexer_cl(*args[:-1], self._table(args[-1]))


class FakeAvx512:
    name, lanes = "avx512", 16

    def __init__(self, table):
        self.table = table


def test_the_avx512_build_is_used_only_where_it_agrees_with_the_avx2_path(monkeypatch):
    """The extension says its best path is avx512, and its avx512 build is either the real
    AVX-512 blocking (here on AVX2 registers) or one whose fiber conv, fiber weight gradient or
    pointwise op is off by a little. The first is used; the others are not, in one line, and
    convs take the AVX2 path."""
    real = build.extension()
    monkeypatch.delenv(paths.SWITCH, raising=False)
    checked = []
    for wrong, taken, said in (("", "avx512", ""), ("fiber", "avx2", "fiber kernel's avx512 path"),
                               ("weight gradient", "avx2", "fiber kernel's avx512 path"),
                               ("pointwise", "avx2", "pointwise kernel's avx512 path"),
                               ("pointwise weight gradient", "avx2", "pointwise kernel's avx512 path"),
                               ("pointwise backward", "avx2", "pointwise kernel's avx512 path")):
        checked.clear()
        monkeypatch.setattr(build, "_loaded", {"module": Simulated(real, wrong, checked), "why": "", "pool": False})
        if wrong:
            with pytest.warns(UserWarning, match=f"{said} disagrees with its avx2 path"):
                assert paths.path() == taken
        else:
            assert paths.path() == taken
        assert 1 <= len(checked) <= len(selfcheck.FIBER_FORMS)  # up to the first disagreement
        conv = FiberConv3d(12, 24, 3, padding=1, groups=2, bias=False)
        x = cl(torch.randn(1, 12, 3, 5, 9))
        with torch.no_grad():
            close(conv(x), fiber.reference(x, conv.weight, 2))
        assert paths.path() == taken
        # checked once per process; the conv ran on the path taken
        assert len(checked) == (len(selfcheck.FIBER_FORMS) + 1 if taken == "avx512" else
                                len(selfcheck.FIBER_FORMS) if wrong.startswith("pointwise") else 1)


def test_a_path_s_packed_weights_are_not_used_by_another(monkeypatch):
    """The packing pads output channels to the path's lanes (8 or 16): a module keeps its packed
    weights per path, and a packing made for another path is refused in one line."""
    conv = FiberConv3d(12, 12, 3, padding=1, groups=2, bias=False).eval()
    x = cl(torch.randn(1, 12, 3, 5, 9))
    outs = []
    for path in ("avx2", "avx512-emulated", "avx2"):
        monkeypatch.setenv(paths.SWITCH, path)
        with torch.no_grad():
            outs.append(conv(x))
    for y in outs:
        close(y, fiber.reference(x, conv.weight, 2))
    ext = build.extension()
    with pytest.raises(RuntimeError, match="packed for another path"):
        ext.forward_cl(x, ext.pack_cl(conv.weight.detach(), 2, ext.isa("avx2")), 6, [1, 1, 1],
                       ext.isa("avx512-emulated"))


AVX512_OPERANDS = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")  # only AVX-512 has them


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump to read the library with")
def test_avx512_instructions_are_only_in_the_avx512_build():
    """A CPU without AVX-512 must never execute one of its instructions: every function of the
    built library that uses AVX-512 registers is one of the AVX-512 build's own (an inline
    function from a header, compiled inside its target region, could otherwise be the copy the
    linker keeps for every path). Checked on the machine code, so a compiler or include-order
    change that leaks one shows here."""
    library = build.build_dir() / f"{build.NAME}.so"
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(library)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    using, function = set(), ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line
        elif AVX512_OPERANDS.search(line):
            using.add(function)
    assert using, "the AVX-512 build is missing from the library"
    own = ("Avx512>", "Avx512,", "forward_avx512(", "wgrad_avx512(", "wgrad_narrow_avx512(", "run_avx512(",
           "multiplex_avx512(", "outer_avx512(", "backward_sums_avx512(", "backward_apply_avx512(",
           "affine_relu_avx512bf16(", "add_avx512bf16(",
           "[clone .avx512f]>")  # GCC's target_clones: the copy its resolver picks where the CPU has AVX-512
    assert all(any(name in f for name in own) for f in using), \
        sorted(f for f in using if "Avx512" not in f)[:5]


@pytest.mark.parametrize("path", ["avx2", "avx512-emulated", "avx512"])
@pytest.mark.parametrize("cout_g", [6, 12, 16])
def test_the_weight_gradient_of_narrow_groups_stays_within_each_group(path, cout_g):
    """Narrow groups (up to 8 output channels; 16 on AVX-512) read grad y in place a whole
    vector at a time, so lanes past a group's channels hold the next group's: their sums must
    land only in padding that is dropped. With one group's grad y non-finite, every other
    group's weight gradient still equals PyTorch's, and the last group (whose loads would reach
    past the tensor) too."""
    if build.extension().best_path(path) != path:
        pytest.skip(f"this CPU cannot run {path}")
    torch.manual_seed(cout_g)
    groups, cin_g = 4, 5
    x = cl(torch.randn(2, groups * cin_g, 3, 5, 13))
    grad = torch.randn(2, groups * cout_g, 3, 5, 13)
    grad[:, cout_g:2 * cout_g] = float("inf")  # group 1
    grad = cl(grad)
    dw = build.extension().grad_weight_cl(x, grad, groups, 3, [1, 1, 1], build.extension().isa(path))
    expected = torch.ops.aten.convolution_backward(
        grad, x, torch.zeros(groups * cout_g, cin_g, 3, 3, 3), None, [1, 1, 1], [1, 1, 1], [1, 1, 1],
        False, [0, 0, 0], groups, [False, True, False])[1]
    others = [g for g in range(groups) if g != 1]
    rows = torch.cat([torch.arange(g * cout_g, (g + 1) * cout_g) for g in others])
    assert torch.isfinite(dw[rows]).all()
    close(dw[rows], expected[rows])
