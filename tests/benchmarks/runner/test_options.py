"""``run.py``'s command line (benchmarks/runner/options.py): what cannot mean anything is one line
and exit status 2, before anything is measured."""

import sys

import pytest
import torch

from benchmarks import run, runner
from benchmarks.runner import options
from models.kernels import build


def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage dump, no traceback
    return err


def test_unknown_model_is_one_line_with_suggestions(capsys, tmp_path):
    err = cli_error(capsys, ["--models", "mfnet,i3dd", "--results", str(tmp_path)])
    assert "unknown model 'i3dd'" in err and "Did you mean i3d" in err


@pytest.mark.parametrize("clip, expected", [("16,112", "three integers"), ("a,b,c", "three integers"),
                                            ("16,8,8", "too small"), ("0,64,64", "too small")])
def test_malformed_or_too_small_clip(capsys, tmp_path, clip, expected):
    assert expected in cli_error(capsys, ["--models", "mfnet", "--clip", clip,
                                          "--results", str(tmp_path)])


def test_a_clip_too_small_for_one_model_names_it(capsys, tmp_path):
    # C3D's five 2x poolings need 16 frames; 4 frames cannot pass pool5
    err = cli_error(capsys, ["--models", "mfnet,c3d", "--clip", "4,32,32",
                             "--results", str(tmp_path / "r")])
    assert "does not fit c3d" in err
    assert not (tmp_path / "r").exists()  # a refused run leaves nothing, not even runs/


def test_the_clip_help_says_what_image_models_take_and_it_is_taken():
    text = " ".join(options.parser().format_help().split())
    assert "T,H,W overriding the spec's input (image models: 1,H,W)" in text
    assert options.parse_args(["--models", "mfnet2d", "--measure", "cost", "--clip", "1,64,64"]).clip == (1, 64, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, tmp_path):
    assert "no CUDA GPU" in cli_error(capsys, ["--device", "cuda", "--results", str(tmp_path)])


def test_quick_runs_go_to_their_own_store_unless_told():
    # smoke-test timings in results/ would be the newest rows the report shows, and would count
    # as "already measured" for a later full run
    assert runner.parse_args(["--quick"]).results == options.QUICK_RESULTS != "results"
    assert runner.parse_args([]).results == "results"
    assert runner.parse_args(["--quick", "--results", "mine"]).results == "mine"


@pytest.mark.parametrize("args, message", [
    (["--models", ""], "--models is empty"),
    (["--measure", "accuracy", "--train-budget", "0"], "--train-budget 0 is invalid"),
    (["--measure", "accuracy", "--train-budget", "nan"], "--train-budget nan is invalid"),
    (["--models", "resnet18", "--measure", "accuracy"], "resnet18 take images"),
    (["--models", "mfnet", "--measure", "accuracy", "--clip", "16,32,48"], "H and W must be equal"),
])
def test_run_refuses_what_cannot_mean_anything_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.strip().count("\n") == 0


def test_tf32_is_refused_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(["--dtype", "tf32"])
    assert exit_info.value.code == 2 and "CUDA math mode" in capsys.readouterr().err


def test_a_run_asking_for_the_kernels_where_they_cannot_be_built_stops_before_measuring(monkeypatch, capsys):
    monkeypatch.setattr(build, "_loaded", {"module": None, "why": "the kernel could not be built (simulated)"})
    with pytest.raises(SystemExit) as exit_:
        runner.parse_args(["--models", "mfnet", "--measure", "speed", "--fiber-kernel"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--fiber-kernel suite: the kernel could not be built (simulated)")


@pytest.mark.parametrize("extra, why", [(["--compile"], "is an eager kernel")])
def test_a_run_where_the_kernels_would_not_run_is_refused_rather_than_mislabelled(extra, why, capsys):
    for asked in ("suite", "paired"):
        with pytest.raises(SystemExit):
            runner.parse_args(["--models", "mfnet", "--measure", "speed", "--fiber-kernel", asked, *extra])
        assert f"--fiber-kernel {asked}: it {why}" in capsys.readouterr().err
    # unasked, the run is on stock kernels and its rows say so
    options = runner.parse_args(["--models", "mfnet", "--measure", "speed", *extra])
    assert options.fiber_kernel == "stock" and options.paired_models == ()


def test_a_bf16_run_pairs_the_kernels_where_the_cpu_runs_bf16(capsys):
    from benchmarks.runtimes import native_why_not

    if native_why_not("cpu", "bf16"):
        pytest.skip("this CPU has no native bf16: bf16 runs are refused")
    options = runner.parse_args(["--models", "mfnet,res3d", "--measure", "speed", "--dtype", "bf16",
                                 "--fiber-kernel", "paired"])
    assert options.fiber_kernel == "paired" and options.paired_models == ("mfnet", "res3d")


def test_a_run_is_on_the_kernels_by_default_and_times_footnote_5_s_pair_on_both(monkeypatch):
    """Unasked, the suite's kernels wherever they run, with MF-Net and its dense control also
    timed on stock kernels in the same rounds (what the report's footnote-5 verdict needs);
    ``paired`` pairs every model, an explicit ``suite`` or ``stock`` none."""
    argv = ["--models", "mfnet,i3d,res3d", "--measure", "speed"]
    default = runner.parse_args(argv)
    assert default.fiber_kernel == "suite" and default.paired_models == ("mfnet", "res3d")
    assert runner.parse_args(argv + ["--fiber-kernel", "paired"]).paired_models == ("mfnet", "i3d", "res3d")
    for asked in ("suite", "stock"):
        options = runner.parse_args(argv + ["--fiber-kernel", asked])
        assert options.fiber_kernel == asked and options.paired_models == ()
    monkeypatch.setattr(build, "_loaded", {"module": None, "why": "the kernel could not be built (simulated)"})
    assert runner.parse_args(argv).fiber_kernel == "stock" and runner.parse_args(argv).paired_models == ()


def test_the_command_line_a_run_records_is_the_one_it_was_given(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", "--models", "mfnet", "--measure", "cost"])
    assert runner.parse_args(None).argv == ("--models", "mfnet", "--measure", "cost")
    assert runner.parse_args(["--models", "res3d"]).argv == ("--models", "res3d")
