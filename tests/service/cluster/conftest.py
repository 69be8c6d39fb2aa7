"""Cluster fixtures: a unique key prefix on the shared Redis (deleted afterwards), and a
private ``redis-server`` for the multi-process tests (ports 7400-7419)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from support import need, port_open

# tests/service's helpers (serve_process) are shared with the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def prefix(redis_url: str):
    name = f"pbkvtest-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of our own (nothing on disk) on a free port in 7400-7419."""
    binary = shutil.which("redis-server")
    need(binary is not None, "the redis-server binary")
    port = next((p for p in range(7400, 7420) if not port_open("127.0.0.1", p)), None)
    need(port is not None, "a free port in 7400-7419")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
