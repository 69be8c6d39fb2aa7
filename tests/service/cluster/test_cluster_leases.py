"""Leases, fencing tokens and the fenced partition log, against a real Redis, step by step."""

from __future__ import annotations

import asyncio

from pbkv.service import records as ev
from pbkv.service.cluster.clients import async_client, sync_client
from pbkv.service.cluster.keys import ENGINE, WORKFLOW, ClusterKeys
from pbkv.service.cluster.leases import Leases
from pbkv.service.cluster.log import PartitionLog
from pbkv.service.records import EventRecord
from pbkv.service.stores.base import StoreError


def ids_in(keys: ClusterKeys, p: int, n: int) -> list[str]:
    """The first ``n`` workflow ids of tenant "default" that fall in partition ``p``."""
    out = [f"w{i}" for i in range(10_000) if keys.workflow_partition("default", f"w{i}") == p]
    return out[:n]


def test_partition_functions_are_stable_and_spread() -> None:
    keys = ClusterKeys("pbkv", 16, 8)
    # CRC-32: the same partition in every process (Python's hash() is salted per process).
    assert keys.workflow_partition("default", "w0") == keys.workflow_partition("default", "w0")
    counts = [0] * 16
    for i in range(1600):
        counts[keys.workflow_partition("t", f"run-{i}")] += 1
    assert min(counts) > 60 and max(counts) < 140
    assert keys.lease(WORKFLOW, 3) == "pbkv:{p3}:lease"
    assert keys.stream(3) == "pbkv:{p3}:events"
    assert keys.lease(ENGINE, 1) == "pbkv:{e1}:lease"


def test_acquire_renew_release_with_increasing_tokens(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 4, 2)

    async def scenario() -> None:
        client = async_client(redis_url, 5.0)
        a, b = Leases(client, keys, "A"), Leases(client, keys, "B")
        # 1. A takes partition 0: the first token is 1.
        la = await a.acquire(WORKFLOW, 0, 60_000)
        assert (la.token, la.holder) == (1, "A:1")
        # 2. B cannot take it while it is held, nor renew it, nor release it.
        assert await b.acquire(WORKFLOW, 0, 60_000) is None
        assert await a.renew(la, 60_000)
        # 3. A releases; B takes it with the next token.
        assert await a.release(la)
        lb = await b.acquire(WORKFLOW, 0, 60_000)
        assert (lb.token, lb.holder) == (2, "B:2")
        # 4. A's old lease is dead: no renew, no release (B's lease stays).
        assert not await a.renew(la, 60_000)
        assert not await a.release(la)
        assert await client.get(keys.lease(WORKFLOW, 0)) == b"B:2"
        # 5. The lease key expires (deleted here as if it had): A takes it, token 3.
        await client.delete(keys.lease(WORKFLOW, 0))
        assert (await a.acquire(WORKFLOW, 0, 60_000)).token == 3
        # 6. Engine partitions have their own counters.
        assert (await a.acquire(ENGINE, 0, 60_000)).token == 1
        assert await a.holders(WORKFLOW) == ["A:3", None, None, None]
        await client.aclose()

    asyncio.run(scenario())


def test_membership_is_live_heartbeats_only(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 4, 2)

    async def scenario() -> None:
        client = async_client(redis_url, 5.0)
        a, b = Leases(client, keys, "A"), Leases(client, keys, "B")
        assert await a.heartbeat(60_000, "h:1") == ["A"]
        assert await b.heartbeat(1, "h:2") == ["A", "B"]
        await asyncio.sleep(0.01)  # B's heartbeat (1 ms, Redis's clock) has expired
        assert await a.heartbeat(60_000, "h:1") == ["A"]
        assert await a.addresses() == {"A": "h:1"}
        await a.leave()
        assert await b.heartbeat(60_000, "h:2") == ["B"]
        await client.aclose()

    asyncio.run(scenario())


def test_the_log_writes_only_under_the_current_lease(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 4, 2)
    mine: dict[int, str] = {}
    log = PartitionLog(redis_url, keys)
    w0, w1 = ids_in(keys, 0, 2)
    (w2,) = ids_in(keys, 1, 1)

    def rec(wid: str) -> EventRecord:
        """An event accepted under the lease this replica holds of its partition now."""
        lease = mine.get(keys.workflow_partition("default", wid), "")
        started = ev.WorkflowStarted("app")
        return EventRecord("default", wid, 1.0, started, event_id=f"id-{wid}", lease=lease)

    async def take(who: str, p: int) -> str:
        client = async_client(redis_url, 5.0)
        lease = await Leases(client, keys, who).acquire(WORKFLOW, p, 60_000)
        await client.aclose()
        return lease.holder

    # 1. Partition 0 is ours (token 1), partition 1 is nobody's: only w0 is written.
    mine[0] = asyncio.run(take("A", 0))
    out = log.append([rec(w0), rec(w2)])
    assert out[0] == 1
    assert isinstance(out[1], StoreError) and "accepted under no lease" in str(out[1])
    # 2. The lease expires and B takes partition 0 (token 2). A still believes it holds
    #    token 1: the script refuses, naming both leases; nothing is written.
    sync_client(redis_url, 5.0).delete(keys.lease(WORKFLOW, 0))
    assert asyncio.run(take("B", 0)) == "B:2"
    out = log.append([rec(w1)])
    assert isinstance(out[0], StoreError)
    assert str(out[0]) == (
        f"partition 0: FENCED {keys.lease(WORKFLOW, 0)} holds B:2, "
        f"the events were accepted under A:1"
    )
    # 3. The stream holds exactly A's one event, under A's token, with its event id.
    entries = list(log.read(0))
    assert [(e.record.seq, e.record.workflow_id, e.writer) for e in entries] == [(1, w0, "A:1")]
    assert entries[0].record.event_id == f"id-{w0}"
    assert list(log.read(1)) == []
    log.close()


def test_the_log_writes_an_event_id_once_among_its_recent_ids(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 4, 2)
    log = PartitionLog(redis_url, keys, recent_ids=3)
    raw = sync_client(redis_url, 5.0)
    (wid,) = ids_in(keys, 0, 1)

    async def take() -> str:
        client = async_client(redis_url, 5.0)
        lease = await Leases(client, keys, "A").acquire(WORKFLOW, 0, 60_000)
        await client.aclose()
        return lease.holder

    lease = asyncio.run(take())

    def rec(eid: str) -> EventRecord:
        step = ev.StepStarted("coder", None, 1.0)
        return EventRecord("default", wid, 1.0, step, event_id=eid, lease=lease)

    def logged() -> list[tuple[int, str]]:
        return [(e.record.seq, e.record.event_id) for e in log.read(0)]

    # 1. Two events, one with an id: seq 1, 2.
    assert log.append([rec("a"), rec("")]) == [1, 2]
    # 2. The same batch again (a lost reply): "a" is answered with its seq 1, not written;
    #    the id-less event cannot be told from a new one and is written (seq 3).
    assert log.append([rec("a"), rec("")]) == [1, 3]
    assert raw.get(keys.resent(0)) == b"1"
    # 3. An id twice in one batch is written once.
    assert log.append([rec("b"), rec("b")]) == [4, 4]
    assert logged() == [(1, "a"), (2, ""), (3, ""), (4, "b")]
    # 4. recent_ids=3 keeps the ids of the last 3 seqs: after seq 5..7, "a" (seq 1) and "b"
    #    (seq 4) are forgotten, so "a" is written again (seq 8) -- a resend must come sooner.
    assert log.append([rec("c"), rec("d"), rec("e")]) == [5, 6, 7]
    assert raw.zrange(keys.ids(0), 0, -1, withscores=True) == [(b"c", 5), (b"d", 6), (b"e", 7)]
    assert log.append([rec("a")]) == [8]
    assert raw.zrange(keys.ids(0), 0, -1) == [b"d", b"e", b"a"]
    raw.close()
    log.close()
