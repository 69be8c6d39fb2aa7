"""``pbkv serve`` in a subprocess, for the tests of tests/service that need the real command."""

from __future__ import annotations

import os
import signal
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


def start_serve(*args: str) -> tuple[subprocess.Popen, int]:
    """``pbkv serve ARGS`` in its own process group, once it is READY: (process, port). Its
    stdout stays a pipe the caller reads or drains."""
    proc = subprocess.Popen(
        [PBKV, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        return proc, ready_port(start_lines(proc))
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        raise
