"""Builders shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_HF_HOME = REPO.parent / "shared" / "hf-home"


def hf_home() -> Path | None:
    """The offline HF cache the tests use: $HF_HOME, else ../shared/hf-home."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"])
    return SHARED_HF_HOME if SHARED_HF_HOME.is_dir() else None


def nemotron(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a subprocess), capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "nemotron.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd or REPO,
    )
