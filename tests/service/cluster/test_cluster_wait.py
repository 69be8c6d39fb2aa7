"""``cluster_wait_replicas`` against a real Redis master and its real replica (``redis_pair``,
ports 7430-7449), step by step: with the knob on, an acknowledged event is on the replica at
acknowledgement time, and an event the replica cannot take (stopped, its link dropped) is
refused (and a resend of its event id is written again, found by its id, and refused
again, not applied twice), so when the master
dies and the replica is promoted no acknowledged event is missing. The same
steps with the knob off show the loss the knob closes."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
import redis

from pbkv.service.client import EVENT_ID_HEADER
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

WAIT_MS = 300


def replica(port: int, wait_replicas: int) -> ServerThread:
    return ServerThread(
        ServiceConfig(
            port=0,
            http_port=None,
            watch_model_s=None,
            cluster_url=f"redis://127.0.0.1:{port}/0",
            cluster_partitions=2,
            cluster_engine_partitions=1,
            cluster_lease_s=60.0,
            cluster_wait_replicas=wait_replicas,
            cluster_wait_timeout_ms=WAIT_MS,
            grace_s=1.0,
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_an_acknowledged_event_is_on_the_redis_replica(redis_pair, wait_replicas) -> None:
    master, mport, redis_replica, rport = redis_pair
    server = replica(mport, wait_replicas)
    server.start()
    keys = server.server.replica.keys
    on_replica = redis.Redis(port=rport)
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.OrchestratorStub(channel)
    try:
        p = keys.workflow_partition("t", "w")
        # 1. A workflow starts: acknowledged as seq 1. With the knob on it is on the Redis
        #    replica when the answer arrives (read there at once, no wait).
        start = pb.StartWorkflowRequest(workflow_id="w", tenant="t", app="app")
        assert stub.StartWorkflow(start, timeout=10).event_seq == 1
        if wait_replicas:
            assert [e[0] for e in on_replica.xrange(keys.stream(p))] == [b"1-0"]
        # 2. The Redis replica stops (SIGSTOP) and the master drops its link (what it had
        #    sent into the socket would still reach it): it takes no more of the writes.
        os.kill(redis_replica.pid, signal.SIGSTOP)
        on_master = redis.Redis(port=mport)
        assert on_master.client_kill_filter(_type="replica") == 1
        assert on_master.info("replication")["connected_slaves"] == 0
        on_master.close()
        step = pb.StepStartedRequest(workflow_id="w", tenant="t", agent="coder")
        t0 = time.monotonic()
        acknowledged = [1]
        if wait_replicas:
            # 3. On: the step's append WAITs WAIT_MS for the replica, which never answers:
            #    refused (UNAVAILABLE), the message naming the knob; not acknowledged.
            md = ((EVENT_ID_HEADER, "evt-2"),)
            for _ in range(2):  # the event, then its resend (same id, a lost answer)
                with pytest.raises(grpc.RpcError) as caught:
                    stub.StepStarted(step, metadata=md, timeout=10)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "0 of cluster_wait_replicas=1" in caught.value.details()
            assert time.monotonic() - t0 >= WAIT_MS / 1000
            # The master's log holds it once (written, not acknowledged): the resend was
            # written again from the owner's record, the script found its id (``resent``),
            # and WAITed in vain again; it was not applied again.
            master_log = redis.Redis(port=mport)
            assert [e[0] for e in master_log.xrange(keys.stream(p))] == [b"1-0", b"2-0"]
            assert master_log.get(keys.resent(p)) == b"1"
            master_log.close()
        else:
            # 3. Off: acknowledged at once (seq 2), though the replica does not have it.
            acknowledged.append(stub.StepStarted(step, timeout=10).event_seq)
            assert acknowledged == [1, 2]
        # 4. The pbkv replica stops; the master dies (kill -9); the Redis replica resumes and
        #    is promoted. Its log holds every acknowledged event only with the knob on.
        channel.close()
        server.stop()
        master.kill()
        master.wait(10)
        os.kill(redis_replica.pid, signal.SIGCONT)
        on_replica.execute_command("REPLICAOF", "NO", "ONE")
        held = [int(e[0].split(b"-")[0]) for e in on_replica.xrange(keys.stream(p))]
        assert held == [1]
        missing = sorted(set(acknowledged) - set(held))
        assert missing == ([] if wait_replicas else [2])
    finally:
        channel.close()
        server.stop()
        on_replica.close()
