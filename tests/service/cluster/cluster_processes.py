"""``pbkv serve`` replicas as real processes (gRPC ports 50200-50239), and reading back what
they wrote to Redis."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from serve_process import PBKV, ready_port, start_lines
from support import port_open

from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.cluster.clients import sync_client
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.cluster.log import LoggedEvent, decode_entry

PORTS = range(50200, 50240)
_handed_out: set[int] = set()  # a port a replica of this session had may still be held


def free_port() -> int:
    port = next((p for p in PORTS if p not in _handed_out and not port_open("127.0.0.1", p)), None)
    assert port is not None, "no free port in 50200-50239"
    _handed_out.add(port)
    return port


class Replica:
    """One ``pbkv serve`` process; ``target`` is its gRPC address. A port another process
    took between our look and its bind is skipped (three tries)."""

    def __init__(self, args: list[str]) -> None:
        for attempt in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [PBKV, "serve", "--port", str(self.port), "--no-dashboard", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                self.lines = start_lines(self.proc)
                break
            except RuntimeError as exc:
                self.proc.wait(10)
                if "cannot serve on" not in str(exc) or attempt == 2:
                    raise
        assert ready_port(self.lines) == self.port
        self.target = f"127.0.0.1:{self.port}"
        # Keep reading its log (a full pipe would stop the process); kept for failures.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def replicas(n: int, url: str, *extra: str) -> list[Replica]:
    return [Replica(["--cluster", url, *extra]) for _ in range(n)]


def model(folder: Path, workflows) -> Path:
    return save_model(
        PREDICTORS.create("markov1", workflows=workflows), folder, {"version": "test"}
    )


def logged(url: str, keys: ClusterKeys) -> list[LoggedEvent]:
    """Every partition's entries, partition by partition, in order."""
    client = sync_client(url, 10.0)
    out = [
        decode_entry(p, entry_id, fields)
        for p in range(keys.workflow_partitions)
        for entry_id, fields in client.xrange(keys.stream(p))
    ]
    client.close()
    return out


def owner_of(url: str, keys: ClusterKeys, kind: str, p: int) -> str | None:
    """The lease value of a partition (``"<replica>:<token>"``), None when free."""
    client = sync_client(url, 10.0)
    value = client.get(keys.lease(kind, p))
    client.close()
    return value.decode() if value is not None else None
