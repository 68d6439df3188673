"""Where a run happened (benchmarks/machine/environment.py): a CPU with another instruction set is
another machine."""

from benchmarks.machine import environment


def test_a_cpu_with_another_instruction_set_is_another_machine(monkeypatch):
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX2")
    avx2 = environment.device_name("cpu")
    monkeypatch.setattr(environment, "cpu_capability", lambda: "AVX512")
    assert avx2.endswith("(AVX2)") and environment.device_name("cpu") != avx2
