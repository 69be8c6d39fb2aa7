"""The adversarial suite's harness: ``pbkv serve`` in its own process (so its RSS is its own and
the attacker's threads do not share its GIL), a health probe that checks it answers within
100 ms throughout, and workflows whose acknowledged events must survive everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pbkv.service.client import PbkvClient

HEALTH_BOUND_S = 0.1
ACKED_TENANT = "acked"


@dataclass
class Served:
    target: str
    control_target: str  # an idle server, for the health probe's baseline
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


_PROBE = """
import json, sys, threading, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stubs = [health_pb2_grpc.HealthStub(grpc.insecure_channel(t)) for t in sys.argv[1:3]]
for stub in stubs:
    stub.Check(health_pb2.HealthCheckRequest(), timeout=10.0)  # connect: not measured
print("up", flush=True)
lock, pairs, failures = threading.Lock(), [], []

def check(stub, out, i):
    t0 = time.perf_counter()
    try:
        if stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0).status != 1:
            failures.append("NOT_SERVING")
    except grpc.RpcError as exc:
        failures.append(exc.code().name)
    out[i] = time.perf_counter() - t0

def probe():
    while True:  # the attacked server and the idle control, at the same moment
        out = [0.0, 0.0]
        threads = [threading.Thread(target=check, args=(s, out, i)) for i, s in enumerate(stubs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with lock:
            pairs.append(out)
        time.sleep(0.01)

threading.Thread(target=probe, daemon=True).start()
for _ in sys.stdin:  # each line asks for what was measured since the last one
    with lock:
        print(json.dumps({"pairs": pairs, "failures": failures}), flush=True)
        pairs.clear()
        failures.clear()
"""


class HealthProbe:
    """Calls Health.Check every 10 ms from its own process (so the attacking threads here do
    not delay it) on the attacked server and, at the same moment, on an idle control server;
    ``check`` asserts on what it measured since the last check.

    The bound is on the attacked server's latency beyond the control's: on a shared machine
    with more runnable processes than cores, both wait for a CPU alike, and that wait is not
    the server's doing."""

    def __init__(self, served: Served) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, served.target, served.control_target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> HealthProbe:
        assert self._proc.stdout.readline().strip() == "up"
        return self

    def __exit__(self, *exc) -> None:
        self._proc.stdin.close()
        self._proc.wait(30)

    def check(self) -> None:
        time.sleep(0.05)  # at least a few samples
        self._proc.stdin.write("report\n")
        self._proc.stdin.flush()
        result = json.loads(self._proc.stdout.readline())
        assert result["failures"] == []
        assert result["pairs"]  # it ran
        attacked, control = max(result["pairs"], key=lambda p: p[0] - p[1])
        assert attacked - control < HEALTH_BOUND_S, (
            f"health took {attacked * 1e3:.0f} ms (the idle control {control * 1e3:.0f} ms)"
        )


def start_serve(tmp: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    pbkv = str(Path(sys.executable).with_name("pbkv"))
    log_path = tmp / "serve.log"
    proc = subprocess.Popen(
        [
            pbkv,
            "serve",
            "--port",
            "0",
            "--no-dashboard",
            "--log-level",
            "INFO",
            "--store-path",
            str(tmp / "traces.sqlite3"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("READY "):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{int(line.split()[1])}", log_path
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"pbkv serve did not start: {log_path.read_text()}")


def assert_acked_intact(srv: Served) -> None:
    with PbkvClient(srv.target, tenant=ACKED_TENANT, timeout_s=10) as client:
        steps = {w.workflow_id: w.num_steps for w in client.list_workflows()}
    assert steps == srv.acked
