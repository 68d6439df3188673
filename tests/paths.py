"""Where the repository is, for tests that run its commands or read its committed files."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
