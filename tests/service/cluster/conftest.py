"""Cluster fixtures: a unique key prefix on the shared Redis (deleted afterwards), and a
private ``redis-server`` for the multi-process tests (ports 7400-7419)."""

from __future__ import annotations

import os
import shutil
import signal
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


def start_redis(ports: range, directory: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """A redis-server of our own (nothing on disk) on the first free port of ``ports``,
    serving once this returns; ``args`` go to redis-server as they are."""
    binary = shutil.which("redis-server")
    need(binary is not None, "the redis-server binary")
    port = next((p for p in ports if not port_open("127.0.0.1", p)), None)
    need(port is not None, f"a free port in {ports.start}-{ports.stop - 1}")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)]
        + list(args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of our own (nothing on disk) on a free port in 7400-7419."""
    proc, port = start_redis(range(7400, 7420), tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture
def redis_pair(tmp_path):
    """A Redis master and its replica (``--replicaof``), ours, on ports in 7430-7449, once the
    replica's link is up: (master process, master port, replica process, replica port)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master, mport = start_redis(range(7430, 7450), tmp_path / "m")
    replica, rport = start_redis(
        range(mport + 1, 7450), tmp_path / "r", "--replicaof", "127.0.0.1", str(mport)
    )
    client = redis.Redis(port=rport)
    deadline = time.monotonic() + 15
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica's link to its master is not up"
        time.sleep(0.05)
    client.close()
    yield master, mport, replica, rport
    for proc in (replica, master):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a test may leave it stopped
        stop(proc)
