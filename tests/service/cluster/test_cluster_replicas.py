"""Two replicas in one process (each its own event loop), on the shared Redis under a unique
prefix: ownership splits, calls are forwarded to owners (or routed there by the client),
a replica with an engine follows the others' workflows by their outlook records, a resent
event id is applied once, a graceful stop hands partitions over."""

from __future__ import annotations

import time

import grpc
import redis

from pbkv.service.client import EVENT_ID_HEADER, PbkvClient
from pbkv.service.cluster.keys import WORKFLOW
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc


def replica(redis_url: str, prefix: str, **overrides) -> ServerThread:
    """An unstarted in-process replica (8 workflow / 4 engine partitions, 1 s leases unless
    ``overrides`` says otherwise)."""
    config = {
        "cluster_partitions": 8,
        "cluster_engine_partitions": 4,
        "cluster_lease_s": 1.0,
        **overrides,
    }
    return ServerThread(
        ServiceConfig(
            port=0,
            http_port=None,
            watch_model_s=None,
            cluster_url=redis_url,
            cluster_prefix=prefix,
            grace_s=1.0,
            **config,
        )
    )


def wait_until(predicate, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def owned(server: ServerThread) -> set[int]:
    return server.run(lambda: {p for k, p in server.server.replica.ready if k == WORKFLOW})


def test_two_replicas_forward_follow_dedupe_and_hand_over(redis_url, prefix) -> None:
    a, b = replica(redis_url, prefix), replica(redis_url, prefix)
    a.start()
    b.start()
    try:
        # 1. Ownership splits 4/4 (target ceil(8 / 2)); no partition is owned twice.
        wait_until(lambda: len(owned(a)) == 4 and len(owned(b)) == 4)
        assert owned(a).isdisjoint(owned(b))
        # Each replica's stats (the dashboard's source) list both replicas' summaries.
        wait_until(
            lambda: len(a.run(lambda: a.server.servicer.stats_dict())["cluster"]["replicas"]) == 2
        )
        keys = a.server.replica.keys
        wid = next(
            f"w{i}" for i in range(1000) if keys.workflow_partition("t", f"w{i}") in owned(b)
        )
        # 2. A call to A for a workflow B owns is forwarded: B logs it under its lease.
        with PbkvClient(a.target, tenant="t") as client:
            assert client.start_workflow(wid, app="app") == 1
            client.step_started(wid, "coder")
        p = keys.workflow_partition("t", wid)
        raw = redis.Redis.from_url(redis_url)
        entries = raw.xrange(keys.stream(p))
        writer = b.run(lambda: b.server.replica.owned[(WORKFLOW, p)].holder)
        assert [e[1][b"o"].decode() for e in entries] == [writer, writer]
        # 3. B holds the workflow. A, with no engine attached, plans nothing and reads only
        #    finished records: it does not hold it; once an engine is attached at A, A reads
        #    B's outlook stream from its rebuild base and holds it too (no steps of its own).
        manager_a = a.server.servicer.manager
        assert b.run(lambda: b.server.servicer.manager.workflow_state(f"t/{wid}").app) == "app"
        assert not a.run(lambda: manager_a.has_workflow(f"t/{wid}"))
        a.run(
            lambda: manager_a.attach_engine("e0", gpu_blocks=8, cpu_blocks=0, tokens_per_block=16)
        )
        wait_until(lambda: a.run(lambda: manager_a.has_workflow(f"t/{wid}")))
        state = a.run(lambda: manager_a.workflow_state(f"t/{wid}"))
        assert (state.app, state.step_index) == ("app", 0)
        # 4. The same event id sent twice (a resend after a lost answer): one log entry,
        #    the same event_seq both times.
        channel = grpc.insecure_channel(a.target)
        stub = pb_grpc.OrchestratorStub(channel)
        request = pb.StepFinishedRequest(workflow_id=wid, tenant="t", agent="coder")
        md = ((EVENT_ID_HEADER, "evt-1"),)
        first = stub.StepFinished(request, metadata=md, timeout=10)
        again = stub.StepFinished(request, metadata=md, timeout=10)
        assert first.event_seq == again.event_seq == 3
        assert raw.xlen(keys.stream(p)) == 3
        channel.close()
        # 5. B stops gracefully: its partitions are handed over (released, not expired)
        #    and A takes all 8; the workflow goes on at A.
        b.stop()
        wait_until(lambda: len(owned(a)) == 8, timeout_s=10)
        with PbkvClient(a.target, tenant="t") as client:
            assert client.end_workflow(wid) == 4
        assert [e[1][b"o"].decode() for e in raw.xrange(keys.stream(p))][-1] != writer
        raw.close()
    finally:
        b.stop()
        a.stop()


def test_a_session_stream_forwards_per_event_in_order(redis_url, prefix) -> None:
    import asyncio

    from pbkv.service.client import AsyncPbkvClient, PbkvError

    a, b = replica(redis_url, prefix), replica(redis_url, prefix)
    a.start()
    b.start()
    try:
        wait_until(lambda: len(owned(a)) == 4 and len(owned(b)) == 4)
        keys = a.server.replica.keys
        theirs = [f"w{i}" for i in range(1000) if keys.workflow_partition("t", f"w{i}") in owned(b)]
        ours = [f"w{i}" for i in range(1000) if keys.workflow_partition("t", f"w{i}") in owned(a)]

        async def scenario() -> list:
            out = []
            client = AsyncPbkvClient(a.target, tenant="t")
            async with client, client.session() as session:
                for wid in (theirs[0], ours[0]):  # forwarded, then applied at A
                    out.append(await session.start_workflow(wid, "app"))
                    out.append(await session.step_started(wid, "coder"))
                # A forwarded event's error comes back as that event's error.
                try:
                    await session.step_started(theirs[1], "coder")
                except PbkvError as exc:
                    out.append(exc.code.name)
                out.append(await session.end_workflow(theirs[0]))
            return out

        assert asyncio.run(scenario()) == [1, 2, 1, 2, "NOT_FOUND", 3]
        raw = redis.Redis.from_url(redis_url)
        p = keys.workflow_partition("t", theirs[0])
        writer = b.run(lambda: b.server.replica.owned[(WORKFLOW, p)].holder)
        assert [e[1][b"o"].decode() for e in raw.xrange(keys.stream(p))] == [writer] * 3
        raw.close()
    finally:
        b.stop()
        a.stop()


def test_a_routed_session_sends_each_workflow_to_its_owner(redis_url, prefix) -> None:
    import asyncio

    from pbkv.service.client import AsyncPbkvClient

    a, b = replica(redis_url, prefix), replica(redis_url, prefix)
    a.start()
    b.start()
    try:
        wait_until(lambda: len(owned(a)) == 4 and len(owned(b)) == 4)
        owners = lambda: a.run(lambda: a.server.replica.stats()["workflow_owners"])  # noqa: E731
        wait_until(lambda: set(owners()) == {a.target, b.target})
        keys = a.server.replica.keys
        theirs = next(
            f"w{i}" for i in range(1000) if keys.workflow_partition("t", f"w{i}") in owned(b)
        )
        ours = next(
            f"w{i}" for i in range(1000) if keys.workflow_partition("t", f"w{i}") in owned(a)
        )

        async def scenario() -> tuple[list, dict]:
            out = []
            client = AsyncPbkvClient(f"{a.target},{b.target}", tenant="t")
            async with client, client.session() as session:
                for wid in (theirs, ours):
                    out.append(await session.start_workflow(wid, "app"))
                    out.append(await session.step_started(wid, "coder"))
                return out, dict(session.counters)

        out, counters = asyncio.run(scenario())
        # 1. Each partition's log numbers its own events: 1, 2 for both workflows.
        assert out == [1, 2, 1, 2]
        # 2. Every event went straight to its owner: none by the first replica's stream,
        #    none forwarded between the replicas.
        assert counters["routed"] == 4 and counters["unrouted"] == 0
        for s in (a, b):
            assert s.run(lambda s=s: s.server._forwarder.counters["forwarded_calls"]) == 0
        # 3. With an engine attached, each replica holds the other's workflow from its
        #    outlook records alone: known, no steps of its own.
        for s, wid in ((a, theirs), (b, ours)):
            m = s.server.servicer.manager
            s.run(lambda m=m: m.attach_engine("e", gpu_blocks=8, cpu_blocks=0, tokens_per_block=16))
            wait_until(lambda s=s, m=m, wid=wid: s.run(lambda: m.has_workflow(f"t/{wid}")))
            state = s.run(lambda s=s, wid=wid: s.server.servicer.manager.workflow_state(f"t/{wid}"))
            assert (state.app, state.step_index) == ("app", 0)
    finally:
        b.stop()
        a.stop()
