"""Sessions for the MF-Net suite. Every session shares one virtual environment, ``.venv``:
torch alone is ~6 GB, so it is built once and reused, and rebuilt only when pyproject.toml
changes. ``nox -l`` lists the sessions; arguments after ``--`` are passed through."""

import hashlib
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
nox.options.sessions = ["tests"]


def shared_python(session: nox.Session) -> str:
    """The shared venv's python, created or updated to match pyproject.toml."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed-from"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "--quiet", "-e", ".[test,lint]",
                    external=True)
        stamp.write_text(digest)
    return str(python)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Run the test suite (CPU; CUDA tests are skipped without a GPU)."""
    session.run(shared_python(session), "-m", "pytest", *session.posargs, external=True)


@nox.session(python=False)
def quick(session: nox.Session) -> None:
    """The quick tier: the tests without the end-to-end command runs (-m "not slow"), under 2 minutes."""
    session.run(shared_python(session), "-m", "pytest", "-m", "not slow and not perf", *session.posargs,
                external=True)


@nox.session(python=False)
def benchmark(session: nox.Session) -> None:
    """The main job: run benchmarks/run.py on its default profile, then regenerate reports/."""
    python = shared_python(session)
    # exit 1 means some measurements are error rows: still regenerate the report
    session.run(python, "benchmarks/run.py", *session.posargs, external=True, success_codes=[0, 1])
    session.run(python, "benchmarks/report.py", external=True)


@nox.session(python=False)
def report(session: nox.Session) -> None:
    """Regenerate reports/ from results/ only."""
    session.run(shared_python(session), "benchmarks/report.py", *session.posargs, external=True)


@nox.session(python=False)
def perf(session: nox.Session) -> None:
    """Time the hot paths (inference and training steps) with pytest-benchmark."""
    session.run(shared_python(session), "-m", "pytest", "tests/perf", "-m", "perf",
                "--benchmark-enable", "--benchmark-only", "-p", "no:cacheprovider",
                *session.posargs, external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.run(shared_python(session), "-m", "ruff", "check", ".", *session.posargs,
                external=True)
