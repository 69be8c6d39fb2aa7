"""The follower's reader thread against a real Redis, step by step: an owner writes two
partitions' logs; a follower with an engine attached (it reads the outlook streams) tails them
on its reader thread and applies every record on the loop, in order and exactly once -- across
a resync with a batch in flight, and with the loop held until the reader stops reading
(back-pressure); closing stops the thread and its connection."""

from __future__ import annotations

import asyncio
import time

from test_cluster_leases import ids_in
from test_cluster_rebuild import rec, step

from pbkv.service import records as ev
from pbkv.service.cluster.clients import async_client, sync_client
from pbkv.service.cluster.follower import Follower
from pbkv.service.cluster.keys import WORKFLOW, ClusterKeys
from pbkv.service.cluster.leases import Leases
from pbkv.service.cluster.log import PartitionLog
from pbkv.service.cluster.tail import MAX_PENDING
from pbkv.service.config import ServiceConfig
from pbkv.service.server import build_manager


class Recording(Follower):
    """A follower that notes each record it applies: (partition, seq, kind, live)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.order: list[tuple[int, int, str, bool]] = []

    def apply(self, r, *, live: bool) -> None:
        if r.seq > self.applied[r.partition]:
            self.order.append((r.partition, r.seq, r.kind, live))
        super().apply(r, live=live)


def held(predicate, timeout_s: float = 10.0) -> None:
    """Wait for ``predicate`` while holding the event loop (its callbacks queue up)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for ``predicate`` with the event loop running."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_the_reader_hands_records_in_order_once_across_a_resync(redis_url, prefix) -> None:
    keys = ClusterKeys(prefix, 2, 1)
    (wa, wb), (wc,) = ids_in(keys, 0, 2), ids_in(keys, 1, 1)
    mine: dict[int, str] = {}
    log = PartitionLog(redis_url, keys)
    raw = sync_client(redis_url, 5.0)

    def of(f: Recording, p: int, since: int = 0) -> list[tuple[int, str, bool]]:
        return [(seq, kind, live) for q, seq, kind, live in f.order[since:] if q == p]

    async def scenario() -> None:
        client = async_client(redis_url, 5.0)
        for p in range(2):  # owner "A" holds both partitions' leases; the follower owns none
            lease = await Leases(client, keys, "A").acquire(WORKFLOW, p, 60_000)
            mine[p] = lease.holder
            log.adopt(p, {}, 0)
        manager = build_manager(ServiceConfig())
        manager.attach_engine("e0", gpu_blocks=8, cpu_blocks=0, tokens_per_block=16)
        f = Recording(client, keys, manager, None)
        f.switch()  # an engine is attached: read the outlook streams
        # 1. Before the reader starts: wa, wb start in partition 0 (seq 1, 2), wc in 1 (seq
        #    1); the start's catch-up applies them (not live: no delay measured).
        log.append(
            [
                rec(wa, ev.WorkflowStarted("app"), mine[0]),
                rec(wb, ev.WorkflowStarted("app"), mine[0]),
            ]
        )
        log.append([rec(wc, ev.WorkflowStarted("app"), mine[1])])
        for p in range(2):
            await f.catch_up(p)
        assert f.order == [(0, 1, "s", False), (0, 2, "s", False), (1, 1, "s", False)]
        f.start_reader(redis_url)
        await f.step()  # the reader's first plan: partition 0 after 2, partition 1 after 1
        # 2. wa's step (seq 3, 4) and wc's (2, 3) come through the reader, live, in order.
        log.append(step(wa, "planner", mine[0]))
        log.append(step(wc, "coder", mine[1]))
        await until(lambda: f.applied == [4, 3])
        assert of(f, 0, 3) == [(3, "+", True), (4, "-", True)]
        assert of(f, 1, 3) == [(2, "+", True), (3, "-", True)]
        assert manager.workflow_state(f"default/{wa}").steps == ()  # outlooks: no steps
        assert f.delay_stats()["outlook_delay_n"] == 4  # live records alone
        # 3. A batch in flight across a resync: the loop is held while the reader reads wb's
        #    step (5, 6) and queues its batch; partition 0 is resynced meanwhile. The batch
        #    (an older plan's) is dropped; the next step reads partition 0 afresh from its
        #    base (1: wa and wb run), applying 1-6 once each, none from the dropped batch.
        handed, mark = f.reader.counters["handed"], len(f.order)
        log.append(step(wb, "coder", mine[0]))
        held(lambda: f.reader.counters["handed"] > handed)
        f.resync(0)
        assert not manager.has_workflow(f"default/{wa}")  # forgotten until read again
        await f.step()
        await until(lambda: f.counters["stale_batches"] == 1)
        assert of(f, 0, mark) == [
            (1, "s", False),
            (2, "s", False),
            (3, "+", False),
            (4, "-", False),
            (5, "+", False),
            (6, "-", False),
        ]
        assert f.applied == [6, 3] and manager.has_workflow(f"default/{wa}")
        # 4. After the resync the reader's new plan goes on live: wa ends (seq 7).
        mark = len(f.order)
        log.append([rec(wa, ev.WorkflowEnded(), mine[0])])
        await until(lambda: f.applied[0] == 7)
        assert of(f, 0, mark) == [(7, "x", True)] and manager.has_ended(f"default/{wa}")
        # 5. Back-pressure: the loop is held; MAX_PENDING single-record batches of partition
        #    1 (wc's steps, seq 4...) are read and queued one by one, then the reader waits for
        #    a slot instead of reading the next. Once the loop runs, all are applied in order.
        mark, batches = len(f.order), f.counters["batches"]
        agents = [f"agent{i}" for i in range(MAX_PENDING + 1)]
        for agent in agents[:MAX_PENDING]:
            handed = f.reader.counters["handed"]
            log.append([rec(wc, ev.StepStarted(agent), mine[1])])
            held(lambda h=handed: f.reader.counters["handed"] > h)
        waits = f.reader.counters["backpressure_waits"]
        log.append([rec(wc, ev.StepStarted(agents[-1]), mine[1])])
        held(lambda: f.reader.counters["backpressure_waits"] > waits)
        assert f.reader.counters["handed"] == handed + 1  # the last record not read yet
        await until(lambda: f.applied[1] == 3 + len(agents))
        assert of(f, 1, mark) == [(4 + i, "+", True) for i in range(len(agents))]
        assert f.counters["batches"] == batches + len(agents)
        # 6. Close: the thread stops (its blocking read woken) and its connection is gone.
        cid = f.reader.client_id
        await f.close()
        assert not f.reader.is_alive()
        assert str(cid) not in {c["id"] for c in raw.client_list()}
        await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        log.close()
        raw.close()
