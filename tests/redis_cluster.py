"""A real Redis Cluster on loopback for tests (importable as ``redis_cluster``, like
``support``): N masters and their replicas, each a ``redis-server --cluster-enabled yes``
process in a temporary folder with nothing on disk, joined by ``redis-cli --cluster create``.

    with LocalRedisCluster(range(7110, 7116), tmp_path) as cluster:   # 3 masters + 3 replicas
        RedisStore(cluster.url)                                       # redis+cluster://...
        cluster.kill(cluster.master_of("{pbkv}:events"))              # kill -9 a master
        cluster.wait_failover(old_master, "{pbkv}:events")            # a replica took over

Contract: ``start`` returns once every node reports ``cluster_state:ok``, every slot is
served and every replica is in sync with its master, or raises ``ClusterStartError`` with
the failing step's output; ``stop`` ends every process it started, by PID (SIGTERM, then
SIGKILL), and never touches another.
The ``redis_cluster`` fixture (tests/conftest.py) runs one on ports 7100-7105 per session;
tests that kill nodes start their own on 7110-7119.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from support import port_open

HOST = "127.0.0.1"


class ClusterStartError(RuntimeError):
    """The cluster did not come up (the message holds what the failing step printed)."""


class LocalRedisCluster:
    def __init__(
        self,
        ports: Iterable[int],
        folder: Path,
        *,
        replicas: int = 1,
        node_timeout_ms: int = 2_000,
    ) -> None:
        self.ports = tuple(ports)
        if len(self.ports) < 3 * (1 + replicas):
            raise ValueError(f"{len(self.ports)} ports: a cluster needs 3 masters + replicas")
        self.folder, self.replicas, self.node_timeout_ms = folder, replicas, node_timeout_ms
        self._procs: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None

    def start(self, timeout_s: float = 60.0) -> None:
        taken = [p for p in self.ports if port_open(HOST, p)]
        if taken:
            raise ClusterStartError(f"ports {taken} are already in use")
        try:
            for port in self.ports:
                self._spawn(port)
            self._wait(lambda: all(self._ping(p) for p in self.ports), timeout_s, "nodes up")
            create = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{HOST}:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            if create.returncode != 0:
                raise ClusterStartError(f"redis-cli --cluster create: {create.stdout[-2000:]}")
            self._wait(self._healthy, timeout_s, "cluster_state:ok on every node")
            # A replica that never synced refuses to fail over (its data is "too old").
            self._wait(self._replicas_synced, timeout_s, "every replica in sync")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._procs.clear()

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ reading it
    @property
    def url(self) -> str:
        """The store URL (``service/stores/redis_store.py``) of a live master."""
        port = next(p for p in self.ports if self.alive(p))
        return f"redis+cluster://{HOST}:{port}"

    def alive(self, port: int) -> bool:
        proc = self._procs.get(port)
        return proc is not None and proc.poll() is None

    def cli(self, port: int, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    def info(self, port: int, section: str = "replication") -> dict[str, str]:
        lines = self.cli(port, "INFO", section).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s hash slot (as a live node sees it)."""
        slot = int(self.cli(self._any_live(), "CLUSTER", "KEYSLOT", key).strip())
        for line in self.cli(self._any_live(), "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(f"no live master serves slot {slot} of {key!r}")

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the replicas connected to the master on ``master_port``."""
        info = self.info(master_port)
        entries = (
            dict(kv.split("=") for kv in info[f"slave{n}"].split(","))
            for n in range(int(info.get("connected_slaves", "0")))
        )
        return sorted(int(e["port"]) for e in entries)

    # ------------------------------------------------------------------ faults
    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port`` (its replica takes over after the node timeout)."""
        proc = self._procs[port]
        proc.kill()
        proc.wait(10)

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start the killed node on ``port`` again (its nodes file kept, its data not): it
        rejoins as a replica of the master that replaced it, once its link is up."""
        self._spawn(port)

        def linked() -> bool:
            return self._ping(port) and self.info(port).get("master_link_status") == "up"

        self._wait(linked, timeout_s, f"node {port} back as a replica", all_alive=False)

    def wait_failover(self, old_master: int, key: str, timeout_s: float = 30.0) -> int:
        """Wait until a live master serves ``key`` in place of ``old_master`` and the cluster
        is ok again; returns its port."""

        def moved() -> bool:
            try:
                return self._healthy() and self.master_of(key) != old_master
            except LookupError:
                return False

        self._wait(moved, timeout_s, f"a new master for {key!r}", all_alive=False)
        return self.master_of(key)

    # ------------------------------------------------------------------ internals
    def _spawn(self, port: int) -> None:
        node_dir = self.folder / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        log = open(node_dir / "redis.log", "w")  # noqa: SIM115 - the process keeps it open
        self._procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",  # replicas sync at once (default: wait 5 s)
                "0",
                "--daemonize",
                "no",
                "--dir",
                str(node_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node_dir,
        )
        log.close()

    def _ping(self, port: int) -> bool:
        return self.alive(port) and self.cli(port, "PING").strip() == "PONG"

    def _any_live(self) -> int:
        return next(p for p in self.ports if self.alive(p))

    def _healthy(self) -> bool:
        for port in self.ports:
            if not self.alive(port):
                continue
            info = dict(
                line.split(":", 1)
                for line in self.cli(port, "CLUSTER", "INFO").splitlines()
                if ":" in line
            )
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                return False
        return True

    def _replicas_synced(self) -> bool:
        roles = [self.info(p) for p in self.ports]
        replicas = [r for r in roles if r.get("role") == "slave"]
        return len(replicas) == 3 * self.replicas and all(
            r.get("master_link_status") == "up" for r in replicas
        )

    def _wait(self, ready, timeout_s: float, what: str, *, all_alive: bool = True) -> None:
        """Poll ``ready`` every 0.1 s; ``all_alive``: a node that exits meanwhile fails it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p for p, proc in self._procs.items() if proc.poll() is not None]
            if dead and all_alive:
                log = (self.folder / f"node-{dead[0]}" / "redis.log").read_text()[-2000:]
                raise ClusterStartError(f"redis-server on {dead[0]} exited: {log}")
            time.sleep(0.1)
        raise ClusterStartError(f"no {what} within {timeout_s} s")
