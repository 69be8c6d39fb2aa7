"""The cluster's core scenarios against a real 3-master + 3-replica Redis Cluster
(``redis+cluster://``, ports 7140-7145; a second one on 7146-7151 has a master killed).

The scenarios are the single-Redis ones, imported: pytest runs them here with this module's
``redis_url``/``private_redis`` (the Redis Cluster, flushed before each test). Scripts keep
one partition's keys in one slot; reads over many partitions go per slot (``clients``).

A master killed with ``kill -9``: Redis Cluster replicates asynchronously and cluster mode does
not WAIT by default, so an append acknowledged by the old master just before it died may never
have reached the replica that is promoted. What the test checks is what holds anyway: the
replicas carry on (writes fail while the slot has no master, then succeed on the promoted one),
every logged entry is unique and in sequence order, and every acknowledged event that is
missing belongs to a partition whose master was killed (none from the other masters). With
``--cluster-wait-replicas 1`` none may be missing at all (the killed node is started again
after the failover: the promoted master has no replica to WAIT for until it is back).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from cluster_processes import logged, replicas
from redis_cluster import ClusterStartError, LocalRedisCluster
from support import need
from test_cluster_leases import (  # the single-Redis scenarios, run here on a Redis Cluster
    test_acquire_renew_release_with_increasing_tokens,  # noqa: F401
    test_membership_is_live_heartbeats_only,  # noqa: F401
    test_the_log_writes_only_under_the_current_lease,  # noqa: F401
)
from test_cluster_processes import (
    KEYS,
    drive,
    test_a_replay_through_three_replicas_hits_as_one_replica,  # noqa: F401
    test_kill_9_loses_no_acknowledged_event_and_work_moves_on,  # noqa: F401
    wait_balanced,
    workload,
)

from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.cluster.clients import sync_client
from pbkv.service.cluster.keys import WORKFLOW


def start_cluster(ports: range, folder) -> LocalRedisCluster:
    need(LocalRedisCluster.available(), "redis-server and redis-cli")
    cluster = LocalRedisCluster(ports, folder)
    try:
        cluster.start()
    except ClusterStartError as exc:
        need(False, f"a local Redis Cluster on ports {ports.start}-{ports.stop - 1} ({exc})")
    return cluster


@pytest.fixture(scope="module")
def redis_cluster_7140(tmp_path_factory):
    cluster = start_cluster(range(7140, 7146), tmp_path_factory.mktemp("rc7140"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_cluster_7140) -> str:
    client = sync_client(redis_cluster_7140.url, 10.0)
    client.flushall()  # every master: no key of an earlier test remains
    client.close()
    return redis_cluster_7140.url


@pytest.fixture
def private_redis(redis_url) -> str:
    return redis_url


@pytest.fixture
def prefix() -> str:
    return f"pbkvtest-{uuid.uuid4().hex[:8]}"


def test_the_keys_of_one_partition_share_a_slot_and_partitions_spread(redis_url) -> None:
    from redis.crc import key_slot

    for p in range(KEYS.workflow_partitions):
        slots = {key_slot(k.encode()) for k in (KEYS.lease(WORKFLOW, p), KEYS.seq(p))}
        assert slots == {key_slot(KEYS.stream(p).encode())}
    client = sync_client(redis_url, 10.0)
    masters = {
        client.get_node_from_key(KEYS.stream(p)).port for p in range(KEYS.workflow_partitions)
    }
    client.close()
    assert len(masters) == 3  # the 16 partitions live on all three masters


def keep_driving(client: PbkvClient, workflows: list, acked: list, stop, failures: list) -> None:
    """Steps 1, 2, ... of every workflow in turn until ``stop``; each acknowledged event in
    ``acked`` (workflow, kind, seq), each failed call in ``failures``."""
    step = 1
    while not stop.is_set():
        for w in workflows:
            if stop.is_set():  # one call at most after stop (each bounded by the client's timeout)
                return
            agent = w.steps[step % len(w.steps)].agent
            try:
                acked.append(
                    (w.workflow_id, "step_started", client.step_started(w.workflow_id, agent))
                )
                seq, _ = client.step_finished_with_seq(w.workflow_id, agent, output_text="done")
                acked.append((w.workflow_id, "step_finished", seq))
            except PbkvError as exc:  # UNAVAILABLE while the slot has no master
                failures.append(exc)
        step += 1


RESUME_WITHIN_S = 30.0  # after a Redis master's failover, until replicas acknowledge again


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_kill_9_of_a_redis_master_fails_over_and_replicas_carry_on(tmp_path, wait_replicas):
    cluster = start_cluster(range(7146, 7152), tmp_path / "rc")
    procs = []
    try:
        url = cluster.url
        wait = ("--cluster-wait-replicas", str(wait_replicas))
        procs = replicas(2, url, "--cluster-lease-s", "3", *wait)
        wait_balanced(url, 2)
        client = PbkvClient(",".join(p.target for p in procs), timeout_s=15)
        workflows = workload(3, 24)
        acked: list = []
        drive(client, workflows, acked, 0)
        # Writes are in flight when the master dies: a thread keeps stepping every workflow.
        stop, failures = threading.Event(), []
        driver = threading.Thread(
            target=keep_driving, args=(client, workflows, acked, stop, failures), daemon=True
        )
        driver.start()
        time.sleep(1.0)
        victim = cluster.master_of(KEYS.stream(0))
        acked_before_kill = len(acked)
        cluster.kill(victim)
        t0 = time.monotonic()
        promoted = cluster.wait_failover(victim, KEYS.stream(0))
        failover_s = time.monotonic() - t0
        if wait_replicas:  # the promoted master has no replica to WAIT for until this
            cluster.restart(victim)
        acked_at_failover = len(acked)
        # The replicas go on once the slot is served again: a call caught on the dead master
        # waits out its socket timeout first, so allow up to 30 s (bounded poll) and report it.
        deadline = t0 + failover_s + RESUME_WITHIN_S
        while len(acked) <= acked_at_failover and time.monotonic() < deadline:
            time.sleep(0.2)
        resumed_s = time.monotonic() - t0 - failover_s
        time.sleep(1.0)
        stop.set()
        driver.join(60)
        assert not driver.is_alive(), [line for r in procs for line in r.lines[-15:]]
        client.close()
        # Progress before the kill and after the failover (during it, the driver may sit in
        # one call to the dead master the whole time).
        assert len(acked) > acked_at_failover >= acked_before_kill > 0, [
            line for r in procs for line in r.lines[-15:]
        ]
        entries = logged(url, KEYS)
        keys_seen = [(e.partition, e.record.seq) for e in entries]
        assert len(keys_seen) == len(set(keys_seen))  # no entry twice
        for p in range(KEYS.workflow_partitions):
            seqs = [s for q, s in keys_seen if q == p]
            assert seqs == sorted(seqs)
        in_log = {(e.record.workflow_id, e.record.kind, e.record.seq) for e in entries}
        missing = [a for a in acked if a not in in_log]
        on_victim = {
            p
            for p in range(KEYS.workflow_partitions)
            if cluster.master_of(KEYS.stream(p)) == promoted
        }
        stray = [a for a in missing if KEYS.workflow_partition("default", a[0]) not in on_victim]
        assert not stray, stray  # no other master's partition lost anything
        if wait_replicas:  # each acknowledged event was on the replica that was promoted
            assert not missing, missing
        print(
            f"master {victim} killed under load: replica {promoted} promoted after "
            f"{failover_s:.1f} s, events acknowledged again {resumed_s:.1f} s later; "
            f"{len(failures)} failed calls; {len(missing)} of {len(acked)} "
            "acknowledged events missing (all on the failed-over master's partitions)"
        )
    finally:
        for r in procs:
            r.stop()
        cluster.stop()
