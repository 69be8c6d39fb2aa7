"""The ``redis-server`` of ``pbkv bench cluster``: started fresh (nothing on disk) on a port
of its own, its command count (``INFO commandstats``) and its capacity (``redis-benchmark``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import redis


def redis_server(port: int, folder: Path, *extra: str) -> subprocess.Popen:
    """A fresh redis-server on ``port`` (``extra``: more of its arguments), serving."""
    from pbkv.cli import CliError

    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError("redis-server is not installed (needed by pbkv bench cluster)")
    client = redis.Redis(port=port, socket_connect_timeout=1.0)
    try:
        client.ping()
        raise CliError(f"--redis-port {port} is in use: pick a free port")
    except redis.ConnectionError:
        pass  # free: ours to start
    except redis.RedisError as exc:
        raise CliError(f"--redis-port {port} is in use ({exc}): pick a free port") from None
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)]
        + list(extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                return proc
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise CliError(f"redis-server did not start on port {port} (in use?)")
        time.sleep(0.05)


def redis_replica(master_port: int, folder: Path) -> subprocess.Popen:
    """A redis-server replicating the one on ``master_port`` (on the next port), once its
    link is up (``cluster_wait_replicas`` runs WAIT for it)."""
    from pbkv.cli import CliError

    folder.mkdir(exist_ok=True)
    port = master_port + 1
    proc = redis_server(port, folder, "--replicaof", "127.0.0.1", str(master_port))
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 15
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            proc.kill()
            raise CliError(f"the Redis replica on port {port} did not link to its master")
        time.sleep(0.05)
    client.close()
    return proc


def commandstats(client: redis.Redis) -> int:
    """Redis commands executed so far (INFO commandstats; INFO itself excluded)."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def redis_capacity(port: int, n: int) -> dict[str, float]:
    """Requests/s of SET, GET and XADD on the node (``redis-benchmark -q``; XADD as a given
    command: redis-benchmark 7.0 has no XADD test of its own)."""

    def bench(*argv: str) -> list[float]:
        out = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-q", "-n", str(n), *argv],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        return [float(v) for v in re.findall(r"([\d.]+) requests per second", out)]

    set_rps, get_rps = bench("-t", "set,get")
    (xadd_rps,) = bench("XADD", "pbkv-bench:xadd", "MAXLEN", "~", "1000", "*", "f", "v")
    return {"set": set_rps, "get": get_rps, "xadd": xadd_rps}
