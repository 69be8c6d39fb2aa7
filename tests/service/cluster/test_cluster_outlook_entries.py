"""The outlook stream holds one entry per append call (its records as one JSON list), against a
real Redis: what the append script writes for a batch, a resent id (in the batch and after
it), a follower reading the entries back, and a Redis that lost the script (``NOSCRIPT``)."""

from __future__ import annotations

import asyncio

import redis
from test_cluster_leases import ids_in

from pbkv.predictor.forecast import AgentForecast, Forecast
from pbkv.service import records as ev
from pbkv.service.cluster.clients import async_client
from pbkv.service.cluster.follower import Follower
from pbkv.service.cluster.keys import WORKFLOW, ClusterKeys
from pbkv.service.cluster.leases import Leases
from pbkv.service.cluster.log import PartitionLog
from pbkv.service.cluster.outlook import decode_outlooks
from pbkv.service.config import ServiceConfig
from pbkv.service.records import EventRecord
from pbkv.service.server import build_manager

FORECAST = Forecast(
    "default/w",
    1,
    2,
    (AgentForecast("coder", (0.25, 0.75), 1.5), AgentForecast("qa", (0.0, 0.1), None)),
    0.5,
    "v7",
)


def take(redis_url: str, keys: ClusterKeys) -> str:
    """Partition 0's lease, held by replica "A"."""

    async def go() -> str:
        client = async_client(redis_url, 5.0)
        lease = await Leases(client, keys, "A").acquire(WORKFLOW, 0, 60_000)
        await client.aclose()
        return lease.holder

    return asyncio.run(go())


def test_one_outlook_entry_per_append_call_and_a_follower_reads_it(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 2, 1)
    wa, wb = ids_in(keys, 0, 2)
    lease = take(redis_url, keys)
    log = PartitionLog(redis_url, keys)
    raw = redis.Redis.from_url(redis_url)

    def rec(wid: str, event, event_id: str = "", forecast=None) -> EventRecord:
        return EventRecord(
            "default", wid, 1.5, event, forecast=forecast, event_id=event_id, lease=lease
        )

    # 1. One batch: wa starts (id e1), runs and finishes "coder" with a forecast, wb starts, and
    #    wa's start comes again in the same batch (e1): written once, answered with seq 1.
    batch = [
        rec(wa, ev.WorkflowStarted("app"), "e1"),
        rec(wa, ev.StepStarted("coder")),
        rec(wa, ev.StepFinished("coder"), "e3", FORECAST),
        rec(wb, ev.WorkflowStarted("app")),
        rec(wa, ev.WorkflowStarted("app"), "e1"),
    ]
    assert log.append(batch) == [1, 2, 3, 4, 1]
    assert raw.xlen(keys.stream(0)) == 4
    assert int(raw.get(keys.resent(0))) == 1
    # 2. The outlook stream holds one entry for the call: id the last seq, n the first.
    ((entry_id, fields),) = raw.xrange(keys.outlook(0))
    assert (entry_id, fields[b"n"]) == (b"4-0", b"1")
    records = decode_outlooks(0, entry_id, fields)
    assert [(r.seq, r.kind, r.workflow) for r in records] == [
        (1, "s", f"default/{wa}"),
        (2, "+", f"default/{wa}"),
        (3, "-", f"default/{wa}"),
        (4, "s", f"default/{wb}"),
    ]
    assert records[2].args == ("coder",) and records[2].forecast == FORECAST
    assert records[1].args == ("coder", None) and records[1].forecast is None
    # 3. A resend of e3 alone is answered from the ids (seq 3): no event, no outlook entry.
    assert log.append([rec(wa, ev.StepFinished("coder"), "e3", FORECAST)]) == [3]
    assert (raw.xlen(keys.stream(0)), raw.xlen(keys.outlook(0))) == (4, 1)
    # 4. wa ends (seq 5): a second entry, and the finished stream holds the end alone.
    assert log.append([rec(wa, ev.WorkflowEnded())]) == [5]
    assert [e[0] for e in raw.xrange(keys.outlook(0))] == [b"4-0", b"5-0"]
    ((end_id, end_fields),) = raw.xrange(keys.finished(0))
    assert end_id == b"5-0" and [r.kind for r in decode_outlooks(0, end_id, end_fields)] == ["x"]
    # 5. A follower reading outlooks from the start applies the five records: wa came and went,
    #    wb runs with no steps of its own.
    manager = build_manager(ServiceConfig())

    async def follow() -> tuple[int, int]:
        client = async_client(redis_url, 5.0)
        follower = Follower(client, keys, manager, None)
        follower.outlooks = True
        n = await follower.catch_up(0)
        await client.aclose()
        return n, follower.applied[0]

    assert asyncio.run(follow()) == (5, 5)
    assert manager.has_ended(f"default/{wa}") and manager.has_workflow(f"default/{wb}")
    log.close()
    raw.close()


def test_a_redis_that_lost_the_script_gets_it_again(private_redis) -> None:
    keys = ClusterKeys("pbkvtest", 2, 1)
    (wa,) = ids_in(keys, 0, 1)
    lease = take(private_redis, keys)
    log = PartitionLog(private_redis, keys)
    raw = redis.Redis.from_url(private_redis)
    event = EventRecord("default", wa, 1.0, ev.WorkflowStarted("app"), lease=lease)
    # 1. The first append meets NOSCRIPT (nothing loaded it yet): loaded, sent again, written.
    assert log.append([event]) == [1]
    # 2. Redis forgets its scripts (a restart): the next append loads it again, written once.
    raw.script_flush()
    assert log.append([event]) == [2]
    assert [e[0] for e in raw.xrange(keys.stream(0))] == [b"1-0", b"2-0"]
    log.close()
    raw.close()
