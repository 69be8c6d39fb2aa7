"""``pbkv serve`` in a subprocess, for tests that need the real command (tests/service,
tests/deploy)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from pathlib import Path

from support import PBKV, ready_port, start_lines


class PbkvServe:
    """``pbkv serve --port PORT --no-dashboard ARGS`` (0: a free port) with its store under
    ``workdir``; ``target``
    is its gRPC address once started; what it prints later is drained into ``output`` (the
    last lines), so a full pipe never stalls it. Stopped (or killed) by its PID only."""

    def __init__(self, workdir: Path, *args: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                PBKV,
                "serve",
                "--port",
                str(port),
                "--no-dashboard",
                "--store-path",
                str(workdir / "pbkv-traces.sqlite3"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            self.port = ready_port(start_lines(self.proc))
        except BaseException:
            self.kill()
            raise
        self.target = f"127.0.0.1:{self.port}"
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._drain = threading.Thread(
            target=self.output.extend, args=(self.proc.stdout,), daemon=True
        )
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_output(self, timeout_s: float = 30.0) -> tuple[int, str]:
        """Wait for the process to exit: its exit code and the last lines it printed."""
        code = self.proc.wait(timeout_s)
        self._drain.join(timeout_s)
        return code, "".join(self.output)

    def kill(self) -> None:
        """SIGKILL, no goodbye (what a crash looks like to the engine)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
