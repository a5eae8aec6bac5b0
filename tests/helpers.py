"""Helpers shared by test modules (pytest puts this folder on sys.path)."""

import subprocess
import sys
from pathlib import Path


def lg(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `lineguard ARGS...` as a user would: a real subprocess."""
    return subprocess.run([sys.executable, "-m", "lineguard", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
