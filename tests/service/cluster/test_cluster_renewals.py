"""Lease renewals count one by one, against a real Redis: when one partition's renewal fails
(its Redis Cluster node is down: the call raises) the other leases are renewed all the same,
and the failing one is neither dropped nor extended -- it lapses locally unless a later
renewal succeeds; one that hangs is cut off at the round's bound, so it delays no other.
A failing heartbeat costs no lease its renewal. Before, one raised
renewal (or heartbeat) discarded every answer of the round, so both replicas of a cluster
let every lease lapse while one master failed over (seen in CI)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from test_cluster_replicas import replica as make_replica
from test_cluster_replicas import wait_until

from pbkv.service.cluster.keys import ENGINE, WORKFLOW


def test_one_failing_renewal_costs_only_its_own_lease(redis_url, prefix) -> None:
    # A 60 s lease: the replica's own renewals (every 20 s) stay out of the steps below.
    a = make_replica(
        redis_url, prefix, cluster_partitions=2, cluster_engine_partitions=1, cluster_lease_s=60.0
    )
    a.start()
    try:
        replica = a.server.replica
        parts = {(WORKFLOW, 0), (WORKFLOW, 1), (ENGINE, 0)}
        wait_until(lambda: a.run(lambda: set(replica.ready)) == parts)
        leases = replica.leases
        renew, heartbeat = leases.renew, leases.heartbeat

        async def renew_but_partition_0(lease, ttl_ms):
            if (lease.kind, lease.partition) == (WORKFLOW, 0):
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:7148.")
            return await renew(lease, ttl_ms)

        # 1. Partition 0's node is down: the round reports the error, renews the other two
        #    and leaves partition 0 held, not extended.
        before = a.run(lambda: dict(replica._valid_until))
        a.run(lambda: setattr(leases, "renew", renew_but_partition_0))
        with pytest.raises(redis.ConnectionError):
            a.call(replica.keep_alive())
        after = a.run(lambda: dict(replica._valid_until))
        assert after[(WORKFLOW, 0)] == before[(WORKFLOW, 0)]
        assert after[(WORKFLOW, 1)] > before[(WORKFLOW, 1)]
        assert after[(ENGINE, 0)] > before[(ENGINE, 0)]
        assert a.run(lambda: set(replica.owned)) == parts
        assert a.run(lambda: replica.counters["lost"]) == 0

        # 2. The heartbeat fails, the renewals do not: every lease is extended and the live
        #    replicas stay as last read.
        async def heartbeat_down(ttl_ms, address):
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:7148.")

        live = a.run(lambda: list(replica.live))
        a.run(
            lambda: (setattr(leases, "renew", renew), setattr(leases, "heartbeat", heartbeat_down))
        )
        with pytest.raises(redis.ConnectionError):
            a.call(replica.keep_alive())
        last = a.run(lambda: dict(replica._valid_until))
        assert all(last[p] > after[p] for p in parts)
        assert a.run(lambda: list(replica.live)) == live == [replica.id]

        # 3. Partition 0's renewal hangs (a node that stopped answering): the round ends at
        #    its bound, the other two renewed, partition 0 neither dropped nor extended.
        async def renew_hangs_on_partition_0(lease, ttl_ms):
            if (lease.kind, lease.partition) == (WORKFLOW, 0):
                await asyncio.sleep(3600)
            return await renew(lease, ttl_ms)

        a.run(lambda: setattr(leases, "heartbeat", heartbeat))
        a.run(lambda: setattr(leases, "renew", renew_hangs_on_partition_0))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            a.call(replica.keep_alive(bound_s=0.5))
        took = time.monotonic() - t0
        hung = a.run(lambda: dict(replica._valid_until))
        assert hung[(WORKFLOW, 0)] == last[(WORKFLOW, 0)]
        assert hung[(WORKFLOW, 1)] > last[(WORKFLOW, 1)] and hung[(ENGINE, 0)] > last[(ENGINE, 0)]
        assert a.run(lambda: set(replica.owned)) == parts
        assert took < 30  # bounded (0.5 s plus the loop's delays), not an hour

        # 4. Back to normal: a renewal that finds its lease gone drops that partition at once.
        a.run(lambda: setattr(leases, "renew", renew))
        redis.Redis.from_url(redis_url).delete(replica.keys.lease(WORKFLOW, 1))
        a.call(replica.keep_alive())
        assert a.run(lambda: set(replica.owned)) == {(WORKFLOW, 0), (ENGINE, 0)}
    finally:
        a.stop()
