"""A take-over's rebuild against a real Redis, step by step: an owner writes a partition's
log (its appends keep the rebuild base at the oldest running workflow's start), dies, and the
next owner rebuilds from that base exactly the running workflows, with their steps."""

from __future__ import annotations

import asyncio

from test_cluster_leases import ids_in

from pbkv.service import records as ev
from pbkv.service.cluster.clients import async_client, sync_client
from pbkv.service.cluster.follower import Follower
from pbkv.service.cluster.keys import WORKFLOW, ClusterKeys
from pbkv.service.cluster.leases import Leases
from pbkv.service.cluster.log import PartitionLog
from pbkv.service.cluster.rebuild import rebuild
from pbkv.service.config import ServiceConfig
from pbkv.service.records import EventRecord
from pbkv.service.server import build_manager


def test_a_take_over_rebuilds_exactly_the_running_workflows(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 2, 1)
    wa, wb, wc, wd = ids_in(keys, 0, 4)
    mine: dict[int, str] = {}
    log = PartitionLog(redis_url, keys)
    redis = sync_client(redis_url, 5.0)

    def rec(wid: str, event) -> EventRecord:
        return EventRecord("default", wid, 1.0, event, lease=mine[0])

    def step(wid: str, agent: str) -> list[EventRecord]:
        return [rec(wid, ev.StepStarted(agent)), rec(wid, ev.StepFinished(agent))]

    def base() -> int:
        return int(redis.get(keys.base(0)))

    async def take_over(who: str):
        """``who`` takes partition 0 once its lease is free (the owner died) and rebuilds it
        into a fresh manager: (lease holder, manager, rebuild's result)."""
        redis.delete(keys.lease(WORKFLOW, 0))  # the dead owner's lease expired
        client = async_client(redis_url, 5.0)
        lease = await Leases(client, keys, who).acquire(WORKFLOW, 0, 60_000)
        manager = build_manager(ServiceConfig())
        out = await rebuild(client, Follower(client, keys, manager, None), 0)
        await client.aclose()
        return lease.holder, manager, out

    def running(manager) -> dict[str, list[str]]:
        return {
            s.workflow_id.split("/", 1)[1]: [x.agent for x in s.steps]
            for s in manager.active_workflows()
        }

    # 1. A owns the empty partition (a take-over of an empty log) and writes, in batches:
    #    seq 1 start wa, 2 start wb | 3-4 wa's step, 5 end wa | 6 start wc, 7-8 wb's step,
    #    9-10 wc's step | 11 start wd, 12 end wc. The base follows the oldest running start.
    mine[0], _, (starts, last, n) = asyncio.run(take_over("A"))
    assert (starts, last, n) == ({}, 0, 0)
    log.adopt(0, starts, last)
    assert log.append([rec(wa, ev.WorkflowStarted("app")), rec(wb, ev.WorkflowStarted("app"))])
    assert base() == 1  # the batch's starts were not running before it: the next seq
    assert log.append([*step(wa, "planner"), rec(wa, ev.WorkflowEnded())]) == [3, 4, 5]
    assert base() == 2  # wa ends in this batch: wb is the oldest running
    log.append([rec(wc, ev.WorkflowStarted("app")), *step(wb, "coder"), *step(wc, "tester")])
    assert log.append([rec(wd, ev.WorkflowStarted("app")), rec(wc, ev.WorkflowEnded())]) == [
        11,
        12,
    ]
    assert base() == 2
    # 2. A dies; B takes over: it reads from seq 2 and applies the events of workflows that
    #    started there or later (2, 6-12: 8 events; wa's 3-5 are skipped, its end remembered).
    mine[0], manager, (starts, last, n) = asyncio.run(take_over("B"))
    assert (starts, last, n) == ({f"default/{wb}": 2, f"default/{wd}": 11}, 12, 8)
    assert running(manager) == {wb: ["coder"], wd: []}
    assert all(manager.has_ended(f"default/{w}") for w in (wa, wc))
    # 3. B writes on from what it rebuilt: wb's second step and end (13-15) move the base to
    #    wd's start; a third owner C rebuilds wd alone (11, 16-17: 3 events; the ends of wc and wb
    #    are remembered, wb's step skipped).
    log.adopt(0, starts, last)
    assert log.append([*step(wb, "coder"), rec(wb, ev.WorkflowEnded())]) == [13, 14, 15]
    assert base() == 11
    log.append(step(wd, "planner"))
    _, manager, (starts, last, n) = asyncio.run(take_over("C"))
    assert (starts, last, n) == ({f"default/{wd}": 11}, 17, 3)
    assert running(manager) == {wd: ["planner"]}
    # 4. Every entry was written under the lease of the owner of its time.
    writers = [e.writer.split(":")[0] for e in log.read(0)]
    assert writers == ["A"] * 12 + ["B"] * 5
    log.close()
    redis.close()
