"""EngineLinkClient against a real gRPC server on loopback.

The server here is a minimal EngineLink servicer written for the test (it records what
arrives and answers each batch with a numbered plan), so the client's own behaviour is what
is checked: batching, drops when the outbox overflows, latest-wins plans, reconnect, fail-open.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from pbkv.cache_manager.events import BlockStored, CachePlan, RequestStarted, Tier
from pbkv.service.convert import event_from_pb, plan_to_pb
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc


class RecordingLink(pb_grpc.EngineLinkServicer):
    def __init__(self, mark: float = 0.0, first_seq: int = 0) -> None:
        self.mark = mark  # stamped into every plan's created_s: tells servers apart
        self.first_seq = first_seq
        self.hellos: list = []
        self.events: list = []
        self.metadata: list = []
        self.lock = threading.Lock()

    def Attach(self, request_iterator, context):  # noqa: N802 - gRPC method name
        self.metadata.append(dict(context.invocation_metadata()))
        hello = next(request_iterator).hello
        with self.lock:
            self.hellos.append(hello)
        seq = self.first_seq
        yield plan_to_pb(CachePlan(hello.engine_id, seq, created_s=self.mark))
        for msg in request_iterator:
            with self.lock:
                self.events.extend(
                    event_from_pb(e, hello.engine_id, i) for i, e in enumerate(msg.events)
                )
                n = len(self.events)
            seq += 1
            reply = plan_to_pb(
                CachePlan(
                    hello.engine_id, seq, evict_first=(n.to_bytes(4, "big"),), created_s=self.mark
                )
            )
            reply.sync = msg.sync
            yield reply


def start_server(servicer: RecordingLink, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_EngineLinkServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    # Polls a condition set by other threads; bounded, and not used to order events.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def stored(i: int) -> BlockStored:
    return BlockStored("e0", (i.to_bytes(8, "big"),), None, 16, Tier.GPU)


def test_events_arrive_in_order_and_the_latest_plan_wins() -> None:
    servicer = RecordingLink()
    server, port = start_server(servicer)
    cfg = EngineLinkConfig(
        target=f"127.0.0.1:{port}",
        engine_id="e0",
        gpu_blocks=8,
        cpu_blocks=4,
        tokens_per_block=16,
        token="s3cret",
    )
    try:
        with EngineLinkClient(cfg) as link:
            assert link.wait_connected(5.0)
            link.send_many(stored(i) for i in range(100))
            link.send(RequestStarted("e0", "r1", (b"\x00" * 8,), 16, 1, 0, "w1", "coder"))
            assert link.flush(5.0)
            assert wait_until(lambda: len(servicer.events) == 101)
            assert wait_until(lambda: link.latest_plan().evict_first == ((101).to_bytes(4, "big"),))
            stats = link.stats()
        assert servicer.hellos[0].engine_id == "e0"
        assert (servicer.hellos[0].gpu_blocks, servicer.hellos[0].cpu_blocks) == (8, 4)
        assert servicer.metadata[0]["authorization"] == "Bearer s3cret"
        assert servicer.events[:100] == [stored(i) for i in range(100)]
        assert servicer.events[100] == RequestStarted(
            "e0", "r1", (b"\x00" * 8,), 16, 1, 0, "w1", "coder"
        )
        assert (stats.events_sent, stats.events_dropped, stats.connects) == (101, 0, 1)
    finally:
        server.stop(None)


def test_sync_returns_once_everything_sent_before_it_was_applied() -> None:
    servicer = RecordingLink()
    server, port = start_server(servicer)
    cfg = EngineLinkConfig(target=f"127.0.0.1:{port}", engine_id="e0", max_batch=7)
    try:
        with EngineLinkClient(cfg) as link:
            assert link.wait_connected(5.0)
            for round_ in range(3):
                link.send_many(stored(i) for i in range(50))
                assert link.sync(5.0)
                # No waiting: the barrier guarantees the server has them all.
                assert len(servicer.events) == 50 * (round_ + 1)
            assert link.sync(5.0)  # with nothing queued: an empty message carries it
    finally:
        server.stop(None)
    assert not link.sync(0.1)  # closed / disconnected: fails fast, never hangs


def test_outbox_overflow_drops_the_oldest_and_counts_them() -> None:
    # No server: nothing leaves the outbox, so the arithmetic of drops is exact.
    cfg = EngineLinkConfig(
        target="127.0.0.1:1", engine_id="e0", outbox_capacity=10, reconnect_initial_s=0.5
    )
    with EngineLinkClient(cfg) as link:
        t0 = time.monotonic()
        link.send_many(stored(i) for i in range(25))
        elapsed = time.monotonic() - t0
        stats = link.stats()
        assert link.latest_plan() is None  # fail open: no plan, engine runs LRU
    assert (stats.events_dropped, stats.outbox_len, stats.connected) == (15, 10, False)
    assert elapsed < 0.5  # never blocks on a dead service


def test_reconnects_after_the_service_restarts_and_plans_go_stale() -> None:
    now = [0.0]
    servicer = RecordingLink()
    server, port = start_server(servicer)
    cfg = EngineLinkConfig(
        target=f"127.0.0.1:{port}",
        engine_id="e0",
        reconnect_initial_s=0.02,
        reconnect_max_s=0.1,
        max_plan_age_s=10.0,
    )
    link = EngineLinkClient(cfg, clock=lambda: now[0])
    try:
        assert link.wait_connected(5.0)
        link.send(stored(1))
        assert link.sync(5.0) and link.latest_plan().seq == 1
        server.stop(None)
        assert wait_until(lambda: not link.stats().connected)
        now[0] = 10.5  # the last plan is now older than max_plan_age_s
        assert link.latest_plan() is None
        servicer2 = RecordingLink(mark=2.0, first_seq=1)
        server, _ = start_server(servicer2, port)
        assert link.wait_connected(5.0)
        # The new stream's first plan has the old plan's seq (1); it still replaces it.
        plan = link.latest_plan()
        assert (plan.seq, plan.created_s) == (1, 2.0)
        link.send(stored(7))
        assert wait_until(lambda: servicer2.events == [stored(7)])
        assert link.stats().connects == 2
    finally:
        link.close()
        server.stop(None)


def test_config_rejects_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="outbox_capacity"):
        EngineLinkConfig(outbox_capacity=0)
    with pytest.raises(ValueError, match="engine_id"):
        EngineLinkConfig(engine_id="")
