"""``pbkv serve`` in a subprocess, for the tests of tests/service that need the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PBKV = str(Path(sys.executable).with_name("pbkv"))  # the installed console script


def start_lines(proc: subprocess.Popen) -> list[str]:
    """What ``pbkv serve`` printed up to and including its ``READY <port>`` line."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY"):
            return lines
    raise RuntimeError(f"pbkv serve ended before READY: {''.join(lines)}")


def ready_port(lines: list[str]) -> int:
    return int(lines[-1].split()[1])
