"""Client-side hardening (issue 13, item 6), against a real server in process: an
``AsyncSession`` whose stream has died fails fast, its batches stay under the server's
message and event caps, and an ``EngineLinkClient`` whose id is taken over stops."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest

from pbkv.service.client import AsyncPbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

Code = grpc.StatusCode


def config(tmp_path: Path, **kw) -> ServiceConfig:
    return ServiceConfig(
        **{
            "port": 0,
            "http_port": None,
            "watch_model_s": None,
            "store_path": tmp_path / "traces.sqlite3",
            **kw,
        }
    )


def test_a_session_whose_stream_died_fails_fast_with_unavailable(tmp_path) -> None:
    async def run(target: str) -> tuple[PbkvError, PbkvError, float]:
        async with (
            AsyncPbkvClient(target, timeout_s=5) as client,
            client.session() as session,
        ):  # no token: refused
            with pytest.raises(PbkvError) as first:
                await session.start_workflow("w1", "app")
            t0 = time.perf_counter()
            with pytest.raises(PbkvError) as second:
                await session.start_workflow("w2", "app")
            return first.value, second.value, time.perf_counter() - t0

    with ServerThread(config(tmp_path, auth_token="s3cret")) as srv:
        first, second, elapsed = asyncio.run(run(srv.target))
    # The first call sees the refusal (UNAUTHENTICATED; gRPC's core sometimes reports the
    # early end of the stream as INTERNAL instead), never its own timeout.
    assert first.code in (Code.UNAUTHENTICATED, Code.INTERNAL, Code.UNAVAILABLE)
    # (When the stream had already ended before the first call, both get the same error.)
    already = first.message.startswith("the session stream has ended (")
    assert second.code == Code.UNAVAILABLE
    assert second.message == (
        first.message if already else f"the session stream has ended ({first})"
    )
    assert elapsed < 0.5  # not the 5 s timeout


def test_session_batches_stay_under_the_servers_message_cap(tmp_path) -> None:
    """12 outputs of 900 KB sent at once are 10.8 MB: one request would be over the server's
    8 MiB receive limit (RESOURCE_EXHAUSTED for the whole stream)."""
    text = "x" * 900_000
    n = 12

    async def run(target: str) -> list:
        async with AsyncPbkvClient(target, timeout_s=30) as client, client.session() as session:
            await asyncio.gather(*(session.start_workflow(f"w{i}", "app") for i in range(n)))
            await asyncio.gather(*(session.step_started(f"w{i}", "a") for i in range(n)))
            return await asyncio.gather(
                *(session.step_finished(f"w{i}", "a", output_text=text) for i in range(n))
            )

    with ServerThread(config(tmp_path)) as srv:
        forecasts = asyncio.run(run(srv.target))
        steps = srv.run(
            lambda: sorted(s.step_index for s in srv.server.servicer.manager.active_workflows())
        )
    assert len(forecasts) == n and steps == [1] * n


def test_session_batches_by_count_are_capped_at_the_servers_event_cap() -> None:
    from pbkv.service.session import AsyncSession

    with pytest.raises(ValueError, match=r"max_batch must be in \[1, 1024\], got 1025"):
        AsyncSession(None, (), 1.0, max_batch=1025)


def test_an_engine_link_taken_over_stops_instead_of_taking_the_id_back(tmp_path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pbkv.service.engine_client")
    with ServerThread(config(tmp_path)) as srv:
        cfg = EngineLinkConfig(
            target=srv.target,
            engine_id="pod-0",
            gpu_blocks=8,
            reconnect_initial_s=0.05,
            reconnect_max_s=0.1,
        )
        with EngineLinkClient(cfg) as first:
            assert first.wait_connected(10)
            with EngineLinkClient(cfg) as second:
                assert second.wait_connected(10)
                deadline = time.monotonic() + 10
                while not first.stats().duplicate_id:
                    assert time.monotonic() < deadline, "the first link never saw ABORTED"
                    time.sleep(0.02)
                time.sleep(1.0)  # room for (wrong) reconnects: 0.05-0.1 s backoff
                a, b = first.stats(), second.stats()
                takeovers = srv.run(lambda: srv.server.engine_link.counters["engine_takeovers"])
                assert (a.connected, a.connects, a.duplicate_id) == (False, 1, True)
                assert (b.connected, b.connects, b.duplicate_id) == (True, 1, False)
                assert takeovers == 1
                assert first.latest_plan() is None  # the engine runs plain LRU
    lines = [r for r in caplog.records if "used by another engine" in r.getMessage()]
    assert len(lines) == 1 and "'pod-0'" in lines[0].getMessage()


def test_session_inflight_window_is_bounded() -> None:
    from pbkv.service.session import AsyncSession

    with pytest.raises(ValueError, match=r"max_inflight must be in \[1, 64\], got 0"):
        AsyncSession(None, (), 1.0, max_inflight=0)


def test_a_session_with_one_request_in_flight_batches_and_the_cpu_meter_counts_it(
    tmp_path, monkeypatch
) -> None:
    """100 workflows step concurrently over one session that keeps one request in flight:
    every event is answered, in few requests (the events sent meanwhile go together), and
    the service's CPU meter (PBKV_CPU_METER) counts the events, messages and components."""
    import json

    from pbkv.service.cpu_meter import COMPONENTS, ENV, per_event_us

    monkeypatch.setenv(ENV, str(tmp_path / "cpu.json"))

    async def workflow(session, i: int) -> int:
        await session.start_workflow(f"w{i}", "app")
        for step in range(3):
            await session.step_started(f"w{i}", "a")
            await session.step_finished(f"w{i}", "a", step_index=step, output_text="ok")
        return await session.end_workflow(f"w{i}")

    async def run(target: str) -> list[int]:
        async with (
            AsyncPbkvClient(target, timeout_s=30) as client,
            client.session(max_inflight=1) as session,
        ):
            return await asyncio.gather(*(workflow(session, i) for i in range(100)))

    with ServerThread(config(tmp_path)) as srv:
        meter = srv.server.cpu_meter
        before = meter.snapshot()
        seqs = asyncio.run(run(srv.target))
        srv.run(meter.write)
    after = json.loads((tmp_path / "cpu.json").read_text())
    assert sorted(seqs)[-1] == 800 and len(set(seqs)) == 100  # 8 events x 100, all recorded
    assert (after["n"], after["events"] - before["events"]) == (1, 800)
    assert 0 < after["requests"] <= 80  # ~8 rounds of up to 100 events, not 800 requests
    assert 0 < after["replies"] <= after["requests"]
    assert set(after["cpu_s"]) == set(COMPONENTS)
    assert all(after["cpu_s"][c] > 0 for c in ("validation", "manager", "store"))
    us = per_event_us(before, after)
    assert us["total"] > us["manager"] + us["store"] > 0
    assert us["events_per_request"] >= 10


def test_session_replies_answer_every_request_in_order_within_the_event_cap(tmp_path) -> None:
    """200 one-event requests written back to back: the replies (several requests' results
    may share one) answer each event once, in order, at most max_session_events per reply."""
    requests = [
        pb.SessionRequest(
            events=[
                pb.SessionEvent(id=i, start=pb.StartWorkflowRequest(workflow_id=f"w{i}", app="a"))
            ]
        )
        for i in range(1, 201)
    ]
    with (
        ServerThread(config(tmp_path, max_session_events=8)) as srv,
        grpc.insecure_channel(srv.target) as channel,
    ):
        replies = list(pb_grpc.OrchestratorStub(channel).Session(iter(requests), timeout=30))
    results = [r for reply in replies for r in reply.results]
    assert [r.id for r in results] == list(range(1, 201))
    assert all(r.code == 0 for r in results) and [r.event_seq for r in results] == list(
        range(1, 201)
    )
    assert 0 < len(replies) <= 200 and max(len(reply.results) for reply in replies) <= 8


class _SlowlyUnavailable(pb_grpc.OrchestratorServicer):
    """Answers every StepStarted UNAVAILABLE after ``delay_s`` (a replica that is stuck and
    then gives up): what a cluster client resends on."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.calls = delay_s, 0

    def StepStarted(self, request, context):  # noqa: N802 - the gRPC method name
        self.calls += 1
        time.sleep(self.delay_s)
        context.abort(Code.UNAVAILABLE, "stuck")


def test_timeout_s_bounds_a_call_with_its_resends() -> None:
    """With several targets a call is resent on UNAVAILABLE; the resend gets only the time
    left of ``timeout_s``. Before, each attempt had the whole ``timeout_s`` again: here the
    second attempt would have ended UNAVAILABLE at about 4.2 s of a 3 s call."""
    from concurrent import futures

    from pbkv.service.client import PbkvClient

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = _SlowlyUnavailable(delay_s=2.0)
    pb_grpc.add_OrchestratorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = f"127.0.0.1:{port},127.0.0.1:{port}"  # two "replicas": resends are on
        with PbkvClient(target, timeout_s=3.0) as client, pytest.raises(PbkvError) as err:
            client.step_started("w1", "planner")
    finally:
        server.stop(None)
    # The first attempt took 2 s and came back UNAVAILABLE; the resend ran out of the 1 s
    # left (its deadline, not the server's answer after another 2 s, ended the call).
    assert servicer.calls == 2
    assert err.value.code == Code.DEADLINE_EXCEEDED, err.value
