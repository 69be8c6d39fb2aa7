"""Run the real ``pbkv`` command in a subprocess (the installed entry point's module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pbkv(
    *argv: str | Path, cwd: Path | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pbkv.cli", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
