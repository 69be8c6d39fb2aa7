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
from pbkv.service.server import ServerThread

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
