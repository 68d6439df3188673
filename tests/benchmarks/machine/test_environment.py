"""Where a run happened (benchmarks/machine/environment.py): a CPU with another instruction set is
another machine."""

import subprocess

from benchmarks.machine import environment


def test_a_cpu_with_another_instruction_set_is_another_machine(monkeypatch):
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX2")
    avx2 = environment.device_name("cpu")
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX512")
    assert avx2.endswith("(AVX2)") and environment.device_name("cpu") != avx2


def test_a_commit_is_dirty_for_changed_code_not_for_the_results_a_run_writes(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "measurements.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(environment, "REPO", tmp_path)
    (tmp_path / "results" / "measurements.csv").write_text("a\nb\n")  # what a run appends
    assert not environment.git_commit().endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert environment.git_commit().endswith("-dirty")
