"""An event accepted under one lease is never written under a later one, against a real
Redis, step by step: a replica accepts an event while it holds partition 0 with token 1,
the event waits for the store (held here at the store's door), the replica loses the lease,
another replica holds it for a while, the first takes it back (token 3) and rebuilds the
partition from its log -- without the waiting event. The event must then be refused (the
caller hears UNAVAILABLE naming the partition and both leases), not written under token 3,
where the log would hold an event the rebuilt state never saw."""

from __future__ import annotations

import asyncio
import threading

import grpc
import redis
from test_cluster_replicas import replica as make_replica

from pbkv.service.cluster.clients import async_client
from pbkv.service.cluster.keys import WORKFLOW
from pbkv.service.cluster.leases import Leases
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc


class StoreDoor:
    """Holds the store's next append (in the recorder's thread) until ``open`` is set; the
    append itself is the real one."""

    def __init__(self, append) -> None:
        self.append = append
        self.waiting, self.open = threading.Event(), threading.Event()

    def __call__(self, events):
        self.waiting.set()
        assert self.open.wait(30), "the door was never opened"
        return self.append(events)


def test_an_event_accepted_under_an_old_lease_is_refused_not_written(redis_url, prefix) -> None:
    # A 60 s lease: the replica's own ticks (every 20 s) stay out of the steps below.
    a = make_replica(
        redis_url,
        prefix,
        cluster_partitions=2,
        cluster_engine_partitions=1,
        cluster_lease_s=60.0,
    )
    a.start()
    raw = redis.Redis.from_url(redis_url)
    channel = grpc.insecure_channel(a.target)
    try:
        replica = a.server.replica
        keys = replica.keys
        wid = next(f"w{i}" for i in range(100) if keys.workflow_partition("t", f"w{i}") == 0)
        stub = pb_grpc.OrchestratorStub(channel)
        first = a.run(lambda: replica.owned[(WORKFLOW, 0)].holder)
        assert first.endswith(":1")
        # 1. A owns partition 0 (token 1): the workflow starts and a step starts, both
        #    acknowledged (seq 1, 2).
        start = pb.StartWorkflowRequest(workflow_id=wid, tenant="t", app="app")
        assert stub.StartWorkflow(start, timeout=10).event_seq == 1
        step = pb.StepStartedRequest(workflow_id=wid, tenant="t", agent="coder")
        assert stub.StepStarted(step, timeout=10).event_seq == 2
        # 2. The step's end is accepted under token 1 (applied to A's manager) and waits at
        #    the store's door.
        log = replica.log
        door = StoreDoor(log.append)
        a.run(lambda: setattr(log, "append", door))
        finished = pb.StepFinishedRequest(workflow_id=wid, tenant="t", agent="coder")
        call = stub.StepFinished.future(finished, timeout=30)
        assert door.waiting.wait(10)
        # 3. A's lease expires (deleted here as if it had): its renewal finds it gone and
        #    drops the partition.
        raw.delete(keys.lease(WORKFLOW, 0))
        a.call(replica.keep_alive())
        assert (WORKFLOW, 0) not in a.run(lambda: set(replica.owned))

        # 4. Another replica holds partition 0 in between (token 2) and lets it go.
        async def hold_in_between() -> str:
            client = async_client(redis_url, 5.0)
            leases = Leases(client, keys, "B")
            lease = await leases.acquire(WORKFLOW, 0, 60_000)
            assert await leases.release(lease)
            await client.aclose()
            return lease.holder

        assert asyncio.run(hold_in_between()) == "B:2"
        # 5. A takes partition 0 back (token 3) and rebuilds it from the log: the workflow
        #    with its running step, no step finished (the waiting event is not in the log).
        a.call(replica._take((WORKFLOW, 0)))
        again = a.run(lambda: replica.owned[(WORKFLOW, 0)].holder)
        assert again == first.rsplit(":", 1)[0] + ":3"
        manager = a.server.servicer.manager
        assert a.run(lambda: manager.workflow_state(f"t/{wid}").step_index) == 0
        # 6. The door opens. The event accepted under token 1 is refused, as a store error
        #    naming the partition and both leases: the caller was never acknowledged.
        door.open.set()
        try:
            call.result()
            raise AssertionError("an event accepted under token 1 was written under token 3")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert "partition 0" in exc.details()
            assert first in exc.details() and again in exc.details()
        entries = raw.xrange(keys.stream(0))
        assert [e[0] for e in entries] == [b"1-0", b"2-0"]
        # 7. Sent again, the step's end is applied once under token 3: seq 3, and the log and
        #    A's state agree (every acknowledged event in the log, once, in order).
        assert stub.StepFinished(finished, timeout=10).event_seq == 3
        writers = [e[1][b"o"].decode() for e in raw.xrange(keys.stream(0))]
        assert writers == [first, first, again]
        assert a.run(lambda: manager.workflow_state(f"t/{wid}").step_index) == 1
    finally:
        channel.close()
        raw.close()
        a.stop()
