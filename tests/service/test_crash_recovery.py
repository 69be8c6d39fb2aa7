"""Durability: SIGKILL ``pbkv serve`` mid-stream, restart it on the same store, and check that
every acknowledged event is there and the unfinished workflows' state is rebuilt -- for the
embedded SQLite store and for Redis (a real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.stores.redis_store import RedisStore
from pbkv.service.stores.sqlite_store import SqliteStore

# The installed console script (``python -m pbkv.cli`` would load pbkv.cli twice).
PBKV = [str(Path(sys.executable).with_name("pbkv"))]


class Serve:
    """``pbkv serve`` as a subprocess on a free port (read from its READY line)."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*PBKV, "serve", "--port", "0", "--no-dashboard", "--log-level", "WARNING", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                # Keep draining its output so the child never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.kill()
        raise AssertionError("pbkv serve did not start:\n" + "\n".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


def stream_until_killed(server: Serve, kill_after_acks: int) -> list[tuple[str, str, int]]:
    """Send workflow events one at a time; SIGKILL the server once ``kill_after_acks`` are
    acknowledged, while the sender is still going. Returns the acknowledged events."""
    acked: list[tuple[str, str, int]] = []
    done = threading.Event()

    def sender() -> None:
        with PbkvClient(server.target, timeout_s=5) as client:
            try:
                for w in range(1_000):
                    wid = f"w{w}"
                    acked.append(("start", wid, client.start_workflow(wid, "app", task="t")))
                    for s, agent in enumerate(["plan", "code", "test", "code"]):
                        acked.append(("step_started", wid, client.step_started(wid, agent)))
                        seq, _ = client.step_finished_with_seq(
                            wid, agent, step_index=s, output_text=f"out {s}"
                        )
                        acked.append(("step_finished", wid, seq))
                    if w % 3 == 0:
                        acked.append(("end", wid, client.end_workflow(wid)))
            except PbkvError:
                pass  # the server died under us: everything before this was acknowledged
            finally:
                done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < kill_after_acks and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.005)
    server.kill()
    assert done.wait(30), "the sender did not notice the dead server"
    assert len(acked) >= kill_after_acks
    return list(acked)


def check_recovery(events, acked, restarted: Serve) -> None:
    recorded = {e.seq: (e.kind, e.workflow_id) for e in events}
    for kind, wid, seq in acked:
        assert recorded.get(seq) == (kind, wid), f"acknowledged event {seq} lost"
    # At most the one in-flight event was recorded without its acknowledgement arriving.
    assert len(recorded) - len(acked) in (0, 1)
    steps: dict[str, list[str]] = {}
    ended: set[str] = set()
    for e in events:
        if e.kind == "step_finished":
            steps.setdefault(e.workflow_id, []).append(e.event.agent)
        elif e.kind == "end":
            ended.add(e.workflow_id)
    started = {e.workflow_id for e in events if e.kind == "start"}
    with PbkvClient(restarted.target, timeout_s=10) as client:
        live = {w.workflow_id: w for w in client.list_workflows()}
        assert set(live) == started - ended
        for wid, summary in live.items():
            assert summary.num_steps == len(steps.get(wid, []))
            assert summary.last_agent == (steps[wid][-1] if steps.get(wid) else "")
        # The rebuilt workflows continue exactly where they stopped.
        wid = max(live, key=lambda w: int(w[1:]))
        n = live[wid].num_steps
        client.step_started(wid, "review")
        client.step_finished(wid, "review", step_index=n)
        for w in ended & started:
            with pytest.raises(PbkvError) as info:
                client.step_started(w, "late")
            assert info.value.code.name == "FAILED_PRECONDITION"


@pytest.mark.slow
def test_sqlite_store_survives_sigkill(tmp_path: Path) -> None:
    store_path = tmp_path / "traces.sqlite3"
    server = Serve("--store-path", str(store_path), cwd=tmp_path)
    acked = stream_until_killed(server, kill_after_acks=120)
    events = list(SqliteStore(store_path).events())
    restarted = Serve("--store-path", str(store_path), cwd=tmp_path)
    try:
        assert any("workflows rebuilt" in line for line in restarted.lines)
        check_recovery(events, acked, restarted)
        assert restarted.terminate() == 0  # SIGTERM drains and exits cleanly
    finally:
        restarted.kill()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["redis", "redis-cluster"])
def test_redis_store_survives_sigkill(request, tmp_path: Path, server: str) -> None:
    if server == "redis":
        redis_url = request.getfixturevalue("redis_url")
    else:  # pbkv serve --redis-url redis+cluster://... on a real cluster
        redis_url = request.getfixturevalue("redis_cluster").url
    prefix = f"pbkv-test-{uuid.uuid4().hex}"
    args = ("--store", "redis", "--redis-url", redis_url, "--redis-prefix", prefix)
    store = RedisStore(redis_url, prefix)
    try:
        server = Serve(*args, cwd=tmp_path)
        acked = stream_until_killed(server, kill_after_acks=120)
        events = list(store.events())
        restarted = Serve(*args, cwd=tmp_path)
        try:
            check_recovery(events, acked, restarted)
        finally:
            restarted.kill()
    finally:
        store.clear()
        store.close()
