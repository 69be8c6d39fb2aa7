"""``AsyncSession``'s coalescing window (``linger_s``): while a request is unanswered, queued
events wait for more to join them, at most ``linger_s`` and at most a full request; order is
kept and nothing queued is lost when the session closes.

The client is the real one over real gRPC; the server is a small ``Session`` servicer that
records each request it receives and holds its answers until the test's condition is met, so
what is in flight is decided by the test, not by timing. A last test runs a real
``pbkv serve`` (``ServerThread``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from pbkv.service.client import AsyncPbkvClient
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.service.session import EVENT_OVERHEAD_BYTES, MAX_LINGER_S, AsyncSession
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc


class HoldingSession(pb_grpc.OrchestratorServicer):
    """Records every request (arrival time, event ids); answers nothing until
    ``release(requests)`` is true of the requests received so far, then answers each
    request (event_seq = the event's id) in order as it comes, ``delay_s`` after the
    previous answer."""

    def __init__(self, release: Callable[[list[list[int]]], bool], delay_s: float = 0.0) -> None:
        self.release, self.delay_s = release, delay_s
        self.requests: list[list[int]] = []
        self.arrived_s: list[float] = []

    async def Session(self, request_iterator, context):  # noqa: N802
        answered = 0
        changed = asyncio.Event()

        async def read() -> None:
            async for request in request_iterator:
                self.requests.append([e.id for e in request.events])
                self.arrived_s.append(time.monotonic())
                changed.set()
            self.requests.append([])  # the client's end of the stream
            changed.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                await changed.wait()
                changed.clear()
                if not self.release(self.requests):
                    continue
                for ids in self.requests[answered:]:
                    if not ids:
                        return
                    await asyncio.sleep(self.delay_s)
                    yield pb.SessionReply(
                        results=[pb.SessionResult(id=i, event_seq=i) for i in ids]
                    )
                answered = len(self.requests)
        finally:
            reader.cancel()


async def serve(servicer: HoldingSession) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def run_against(release, body, delay_s: float = 0.0) -> HoldingSession:
    """``body(client)`` against a ``HoldingSession(release, delay_s)``."""
    servicer = HoldingSession(release, delay_s)

    async def main() -> None:
        server, target = await serve(servicer)
        try:
            async with AsyncPbkvClient(target, timeout_s=10) as client:
                await body(client)
        finally:
            await server.stop(None)

    asyncio.run(main())
    return servicer


def test_events_queued_while_a_request_is_unanswered_wait_the_window_and_go_together() -> None:
    """Event 1 goes at once (nothing in flight). Events 2-6, queued while 1 is unanswered,
    go as one request, in call order, once the oldest is ``linger_s`` old: the server
    answers nothing until that second request arrives, so only the window's timer can
    send it."""
    linger_s = 0.05
    queued_s: list[float] = []
    seqs: list[int] = []

    async def body(client: AsyncPbkvClient) -> None:
        async with client.session(linger_s=linger_s) as session:
            first = asyncio.ensure_future(session.start_workflow("w1", "app"))
            await asyncio.sleep(0.01)  # request 1 is out and unanswered
            queued_s.append(time.monotonic())
            rest = await asyncio.gather(
                *(session.start_workflow(f"w{i}", "app") for i in range(2, 7))
            )
            seqs.extend([await first, *rest])

    servicer = run_against(lambda requests: len(requests) >= 2, body)
    assert servicer.requests == [[1], [2, 3, 4, 5, 6], []]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert servicer.arrived_s[1] - queued_s[0] >= linger_s  # it waited out the window


def test_a_full_request_ends_the_window_and_requests_stay_within_max_batch() -> None:
    """max_batch 4 and the longest window: while request 1 is unanswered, event 2 lingers;
    events 3-9 join it, and the fourth queued ends the wait: they go at once as 4 + 4, in
    order, without waiting for the window's timer. (A remainder short of a full request
    would start its own window.)"""
    times: dict[str, float] = {}

    async def body(client: AsyncPbkvClient) -> None:
        async with client.session(linger_s=MAX_LINGER_S, max_batch=4) as session:
            first = asyncio.ensure_future(session.start_workflow("w1", "app"))
            await asyncio.sleep(0.01)
            times["queued"] = time.monotonic()
            second = asyncio.ensure_future(session.start_workflow("w2", "app"))
            await asyncio.sleep(0.01)  # the writer lingers with event 2
            rest = await asyncio.gather(
                second, *(session.start_workflow(f"w{i}", "app") for i in range(3, 10))
            )
            times["answered"] = time.monotonic()
            assert [await first, *rest] == list(range(1, 10))

    servicer = run_against(lambda requests: len(requests) >= 3, body)
    assert servicer.requests == [[1], [2, 3, 4, 5], [6, 7, 8, 9], []]
    assert times["answered"] - times["queued"] < MAX_LINGER_S / 2  # not the 1 s window


def test_a_full_request_by_bytes_ends_the_window() -> None:
    """max_batch_bytes set to exactly two events: one lingers, the second fills the request,
    so the window ends and both go together at once."""
    times: dict[str, float] = {}
    task = "x" * 3000
    event = pb.SessionEvent(id=2, start=pb.StartWorkflowRequest(workflow_id="w2", app="app"))
    event.start.task = task
    cap = 2 * (event.ByteSize() + EVENT_OVERHEAD_BYTES)

    async def body(client: AsyncPbkvClient) -> None:
        async with client.session(linger_s=MAX_LINGER_S, max_batch_bytes=cap) as session:
            first = asyncio.ensure_future(session.start_workflow("w1", "app"))
            await asyncio.sleep(0.01)
            times["queued"] = time.monotonic()
            second = asyncio.ensure_future(session.start_workflow("w2", "app", task=task))
            await asyncio.sleep(0.01)  # the writer lingers with event 2
            third = await session.start_workflow("w3", "app", task=task)
            times["answered"] = time.monotonic()
            assert [await first, await second, third] == [1, 2, 3]

    servicer = run_against(lambda requests: len(requests) >= 2, body)
    assert servicer.requests == [[1], [2, 3], []]
    assert times["answered"] - times["queued"] < MAX_LINGER_S / 2


def test_close_sends_what_lingers_at_once_and_every_call_is_answered() -> None:
    """Events lingering when the session closes go out right away (not after the 1 s
    window), and all of them are answered before close returns."""
    out: dict[str, object] = {}

    async def body(client: AsyncPbkvClient) -> None:
        session = await client.session(linger_s=MAX_LINGER_S).__aenter__()
        calls = [asyncio.ensure_future(session.start_workflow("w1", "app"))]
        await asyncio.sleep(0.01)
        calls += [asyncio.ensure_future(session.step_started("w1", a)) for a in "abc"]
        await asyncio.sleep(0.01)  # queued, lingering behind the unanswered request 1
        t0 = time.monotonic()
        await session.close()
        out["close_s"] = time.monotonic() - t0
        out["seqs"] = [c.result() for c in calls]  # all done: no await needed

    servicer = run_against(lambda requests: requests[-1:] == [[]], body)
    assert servicer.requests == [[1], [2, 3, 4], []]
    assert out["seqs"] == [1, 2, 3, 4]
    assert out["close_s"] < MAX_LINGER_S / 2


def test_with_nothing_in_flight_an_event_goes_at_once() -> None:
    """An idle stream adds no delay: each event, sent after the previous one is answered,
    goes alone and is answered well within the (1 s) window."""
    elapsed: list[float] = []

    async def body(client: AsyncPbkvClient) -> None:
        async with client.session(linger_s=MAX_LINGER_S) as session:
            for i in range(3):
                t0 = time.monotonic()
                await session.start_workflow(f"w{i}", "app")
                elapsed.append(time.monotonic() - t0)

    servicer = run_against(lambda requests: True, body)
    assert servicer.requests == [[1], [2], [3], []]
    assert max(elapsed) < MAX_LINGER_S / 2


def test_the_answer_to_the_last_unanswered_request_ends_the_window() -> None:
    """Request 1 is answered 0.1 s after it arrives; event 2, queued meanwhile, lingers in a
    1 s window, and goes as soon as that answer leaves nothing unanswered."""
    elapsed: dict[str, float] = {}

    async def body(client: AsyncPbkvClient) -> None:
        async with client.session(linger_s=MAX_LINGER_S) as session:
            first = asyncio.ensure_future(session.start_workflow("w1", "app"))
            await asyncio.sleep(0.01)
            t0 = time.monotonic()
            assert await session.start_workflow("w2", "app") == 2
            elapsed["second"] = time.monotonic() - t0
            assert await first == 1

    servicer = run_against(lambda requests: True, body, delay_s=0.1)
    assert servicer.requests == [[1], [2], []]
    assert elapsed["second"] < MAX_LINGER_S / 2  # its answer's 0.1 s, not the window


def test_linger_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"linger_s must be in \[0, 1.0\], got 1.5"):
        AsyncSession(None, (), 1.0, linger_s=1.5)
    with pytest.raises(ValueError, match=r"linger_s must be in \[0, 1.0\], got -0.1"):
        AsyncSession(None, (), 1.0, linger_s=-0.1)


def test_a_lingering_session_against_pbkv_serve_answers_every_event(tmp_path: Path) -> None:
    """100 workflows over one lingering session against the real service: every event is
    recorded once, each workflow's events in its order (its end is its last seq)."""

    async def workflow(session, i: int) -> list[int]:
        seqs = [await session.start_workflow(f"w{i}", "app")]
        for step in range(3):
            seqs.append(await session.step_started(f"w{i}", "a"))
            await session.step_finished(f"w{i}", "a", step_index=step, output_text="ok")
        seqs.append(await session.end_workflow(f"w{i}"))
        return seqs

    async def run(target: str) -> list[list[int]]:
        async with (
            AsyncPbkvClient(target, timeout_s=30) as client,
            client.session(linger_s=0.005) as session,
        ):
            return await asyncio.gather(*(workflow(session, i) for i in range(100)))

    config = ServiceConfig(
        port=0, http_port=None, watch_model_s=None, store_path=tmp_path / "t.sqlite3"
    )
    with ServerThread(config) as srv:
        per_workflow = asyncio.run(run(srv.target))
        recorded = srv.run(lambda: srv.server.servicer.recorder.stats().recorded)
    assert recorded == 800
    assert all(seqs == sorted(seqs) and len(set(seqs)) == 5 for seqs in per_workflow)
