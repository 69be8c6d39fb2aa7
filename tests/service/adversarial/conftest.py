"""The adversarial suite's harness: ``pbkv serve`` in its own process (so its RSS is its own and
the attacker's threads do not share its GIL), a health probe that checks it answers within
100 ms throughout, and workflows whose acknowledged events must survive everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbkv.service.client import PbkvClient

HEALTH_BOUND_S = 0.1
ACKED_TENANT = "acked"


@dataclass
class Served:
    target: str
    proc: subprocess.Popen
    log_path: Path
    idle_rss_mb: float
    acked: dict[str, int] = field(default_factory=dict)  # workflow id -> acknowledged steps

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class HealthProbe:
    """Calls Health.Check every 10 ms from its own thread and channel; keeps the latencies."""

    def __init__(self, target: str) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            t0 = time.perf_counter()
            try:
                reply = self._stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(f"status {reply.status}")
            except grpc.RpcError as exc:
                self.failures.append(exc.code().name)
            self.latencies.append(time.perf_counter() - t0)

    def __enter__(self) -> HealthProbe:
        # the first call opens the connection: not part of what is measured
        self._stub.Check(health_pb2.HealthCheckRequest(), timeout=10.0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self._channel.close()

    def check(self) -> None:
        assert self.failures == []
        assert len(self.latencies) >= 10
        worst = max(self.latencies)
        assert worst < HEALTH_BOUND_S, f"health took {worst * 1e3:.0f} ms"


def start_serve(tmp: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    pbkv = str(Path(sys.executable).with_name("pbkv"))
    log_path = tmp / "serve.log"
    proc = subprocess.Popen(
        [pbkv, "serve", "--port", "0", "--no-dashboard", "--log-level", "INFO",
         "--store-path", str(tmp / "traces.sqlite3"), *extra],
        stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("READY "):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{int(line.split()[1])}", log_path
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"pbkv serve did not start: {log_path.read_text()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("adversarial")
    proc, target, log_path = start_serve(tmp, "--engine-grace-s", "0.05")
    try:
        time.sleep(0.5)
        srv = Served(target, proc, log_path, psutil.Process(proc.pid).memory_info().rss / 2**20)
        with PbkvClient(target, tenant=ACKED_TENANT, timeout_s=10) as client:
            for i in range(5):  # acknowledged before the attacks: must all survive them
                wid = f"acked-{i}"
                client.start_workflow(wid, "app")
                for s in range(3):
                    client.step_started(wid, "agent")
                    client.step_finished(wid, "agent", step_index=s, output_text="ok")
                srv.acked[wid] = 3
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def assert_acked_intact(srv: Served) -> None:
    with PbkvClient(srv.target, tenant=ACKED_TENANT, timeout_s=10) as client:
        steps = {w.workflow_id: w.num_steps for w in client.list_workflows()}
    assert steps == srv.acked
