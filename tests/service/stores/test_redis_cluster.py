"""The Redis store on a real Redis Cluster: URL forms, the key layout, and a master killed
with ``kill -9`` (its replica takes over; what ``wait_replicas`` acknowledged survives)."""

from __future__ import annotations

import time
import uuid

import pytest
from redis_cluster import LocalRedisCluster

from pbkv.service.records import StepFinished, WorkflowStarted
from pbkv.service.stores import EventRecord, StoreError
from pbkv.service.stores.redis_store import RedisStore, parse_url


def test_url_forms_select_the_client_and_the_wait_options() -> None:
    assert parse_url("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", False, 0, 1000)
    assert parse_url("redis+cluster://h:7100") == ("redis://h:7100", True, 0, 1000)
    assert parse_url("rediss+cluster://h:7100?wait_replicas=1&wait_timeout_ms=250") == (
        "rediss://h:7100",
        True,
        1,
        250,
    )
    # redis-py's own options pass through; ours are taken out
    assert parse_url("redis://h/0?wait_replicas=2&health_check_interval=5") == (
        "redis://h/0?health_check_interval=5",
        False,
        2,
        1000,
    )
    with pytest.raises(StoreError, match=r"wait_replicas='x' must be an integer in \[0, 16\]"):
        parse_url("redis+cluster://h:7100?wait_replicas=x")
    with pytest.raises(StoreError, match=r"wait_timeout_ms='0' must be an integer in \[1, 60000\]"):
        parse_url("redis://h?wait_timeout_ms=0")
    with pytest.raises(StoreError, match="must be non-empty without spaces or braces"):
        RedisStore("redis://127.0.0.1:1/0", prefix="a{b}")


def test_a_plain_url_to_a_cluster_node_names_the_cluster_form(redis_cluster) -> None:
    port = redis_cluster.ports[0]
    with pytest.raises(StoreError, match=f"use redis\\+cluster://127.0.0.1:{port}"):
        RedisStore(f"redis://127.0.0.1:{port}/0")


def test_every_key_of_a_prefix_hashes_to_the_prefix_slot(redis_cluster) -> None:
    prefix = f"pbkv-test-{uuid.uuid4().hex}"
    store = RedisStore(redis_cluster.url, prefix)
    try:
        store.append([EventRecord("default", "w", 1.0, WorkflowStarted("app"))])
        port = redis_cluster.master_of(store.key)
        slot = redis_cluster.cli(port, "CLUSTER", "KEYSLOT", prefix).strip()
        assert redis_cluster.cli(port, "CLUSTER", "KEYSLOT", store.key).strip() == slot
        assert redis_cluster.cli(port, "CLUSTER", "COUNTKEYSINSLOT", slot).strip() == "1"
        assert store.key == f"{{{prefix}}}:events"
    finally:
        store.clear()
        store.close()


def test_the_key_of_older_versions_is_renamed_on_a_single_redis(redis_url: str) -> None:
    import redis

    prefix = f"pbkv-test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    old = RedisStore(redis_url, prefix)
    old.append([EventRecord("default", "w", 1.0, WorkflowStarted("app"))])
    client.rename(old.key, f"{prefix}:events")  # what a store of the previous layout wrote
    old.close()
    store = RedisStore(redis_url, prefix)
    try:
        assert [e.workflow_id for e in store.events()] == ["w"]
        assert not client.exists(f"{prefix}:events")
    finally:
        store.clear()
        store.close()
        client.close()


@pytest.mark.slow
def test_acknowledged_appends_survive_a_master_killed_with_sigkill(tmp_path) -> None:
    """Two replicas per master and ``wait_replicas=1``: every acknowledged append is on a
    replica, so after ``kill -9`` of the master and a replica's promotion every acknowledged
    event is read back at its sequence number. Appends fail (StoreError) during the failover
    and succeed again after it; one that failed on too few replicas may still be in the log
    (it was written, not acknowledged), so the log holds every step at least once, in order."""
    from support import need

    need(LocalRedisCluster.available(), "redis-server and redis-cli")
    ports = range(7110, 7119)  # 3 masters x (1 + 2 replicas)
    with LocalRedisCluster(ports, tmp_path, replicas=2, node_timeout_ms=2_000) as cluster:
        store = RedisStore(f"{cluster.url}?wait_replicas=1&wait_timeout_ms=1000", "failover")
        acked: list[tuple[int, int]] = []  # (seq, step_index)

        def append(i: int) -> bool:
            event = EventRecord("default", "w", float(i), StepFinished("agent", step_index=i))
            try:
                (seq,) = store.append([event])
            except StoreError:
                return False
            acked.append((seq, i))
            return True

        assert all(append(i) for i in range(200))
        master = cluster.master_of(store.key)
        replicas = cluster.replicas_of(master)
        assert len(replicas) == 2
        cluster.kill(master)
        failed, i = 0, 200
        deadline = time.monotonic() + 60
        while i < 220 and time.monotonic() < deadline:  # until the new master answers
            if append(i):
                i += 1
            else:
                failed += 1
                time.sleep(0.1)
        assert i == 220, f"no append succeeded within 60 s of the kill ({failed} failed)"
        assert failed > 0  # the kill was felt: appends failed while no master had the slot
        assert cluster.wait_failover(master, store.key) in replicas
        events = list(store.events())
        read = {e.seq: e.event.step_index for e in events}
        assert [read.get(seq) for seq, _ in acked] == [index for _, index in acked]
        steps = [e.event.step_index for e in events]
        assert list(dict.fromkeys(steps)) == list(range(220)) and steps == sorted(steps)
        store.close()
