"""Exactly once across a lost reply, against a real Redis behind a proxy that loses the
append script's traffic (``LossyProxy``), step by step: the script ran but its reply was
lost, or its request never reached Redis; either way the caller hears UNAVAILABLE and sends
the event again with the same id. Each time the event must end up in the log once and in the
owner's state once, and the answer must name its one sequence number."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlparse

import grpc
import pytest
import redis
from cluster_processes import model
from lossy_proxy import LossyProxy

from pbkv.service.client import EVENT_ID_HEADER
from pbkv.service.cluster.log import APPEND
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.training.synth import synthesize
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

# The append script's call as redis-py sends it (the SCRIPT EXISTS before it names the sha
# alone; the lease scripts have other shas).
EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n" + hashlib.sha1(APPEND.encode()).hexdigest().encode()


@pytest.fixture
def proxy(redis_url: str):
    url = urlparse(redis_url)
    p = LossyProxy((url.hostname or "127.0.0.1", url.port or 6379), range(7450, 7460))
    yield p
    p.close()


def test_a_lost_append_reply_is_neither_logged_nor_applied_twice(
    redis_url, prefix, proxy, tmp_path
):
    db = urlparse(redis_url).path or "/0"
    trained = synthesize("dynamic", 1, 10, output_tokens=(5, 20), system_tokens=(100, 400))
    a = ServerThread(
        ServiceConfig(
            port=0,
            http_port=None,
            watch_model_s=None,
            model_path=model(tmp_path / "model", trained),  # its ends carry summaries
            cluster_url=f"redis://127.0.0.1:{proxy.port}{db}",
            cluster_prefix=prefix,
            cluster_partitions=2,
            cluster_engine_partitions=1,
            cluster_lease_s=60.0,  # its ticks (every 20 s) stay out of the steps below
            grace_s=1.0,
        )
    )
    a.start()
    raw = redis.Redis.from_url(redis_url)
    channel = grpc.insecure_channel(a.target)
    try:
        keys = a.server.replica.keys
        wid = next(f"w{i}" for i in range(100) if keys.workflow_partition("t", f"w{i}") == 0)
        stub = pb_grpc.OrchestratorStub(channel)
        manager = a.server.servicer.manager

        def call(method, request, eid: str) -> int:
            return method(request, metadata=((EVENT_ID_HEADER, eid),), timeout=30).event_seq

        def logged() -> list[tuple[int, str]]:
            return [
                (int(e[0].split(b"-")[0]), e[1][b"i"].decode()) for e in raw.xrange(keys.stream(0))
            ]

        def steps_done() -> int:
            return a.run(lambda: manager.workflow_state(f"t/{wid}").step_index)

        def started(agent: str) -> pb.StepStartedRequest:
            return pb.StepStartedRequest(workflow_id=wid, tenant="t", agent=agent)

        def finished(agent: str) -> pb.StepFinishedRequest:
            return pb.StepFinishedRequest(workflow_id=wid, tenant="t", agent=agent)

        # 1. The workflow starts and its first step starts: seq 1, 2.
        start = pb.StartWorkflowRequest(workflow_id=wid, tenant="t", app="app")
        assert call(stub.StartWorkflow, start, "e-1") == 1
        assert call(stub.StepStarted, started("coder"), "e-2") == 2
        # 2. The step's end: the append script runs in Redis (seq 3), its reply is lost; the
        #    caller hears UNAVAILABLE. The owner applied it (step_index 1).
        proxy.lose(1, EVALSHA, "reply")
        with pytest.raises(grpc.RpcError) as caught:
            call(stub.StepFinished, finished("coder"), "e-3")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proxy.lost == 1
        assert logged() == [(1, "e-1"), (2, "e-2"), (3, "e-3")]
        assert steps_done() == 1
        # 3. The caller sends e-3 again: answered with its seq 3, neither applied nor logged
        #    a second time.
        assert call(stub.StepFinished, finished("coder"), "e-3") == 3
        assert logged() == [(1, "e-1"), (2, "e-2"), (3, "e-3")]
        assert steps_done() == 1
        # 4. The next step starts (seq 4); its end's request is lost on the way (the script
        #    never runs): UNAVAILABLE, not in the log, but applied in the owner's state.
        assert call(stub.StepStarted, started("reviewer"), "e-4") == 4
        proxy.lose(1, EVALSHA, "request")
        with pytest.raises(grpc.RpcError) as caught:
            call(stub.StepFinished, finished("reviewer"), "e-5")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proxy.lost == 2
        assert len(logged()) == 4
        assert steps_done() == 2
        # 5. Sent again: written now (seq 5) from what was applied, not applied a second
        #    time. Log and state agree: every event once, in order.
        assert call(stub.StepFinished, finished("reviewer"), "e-5") == 5
        assert logged() == [(s, f"e-{s}") for s in range(1, 6)]
        assert steps_done() == 2
        # 6. The workflow's end is lost on the way too; written on the resend (seq 6), it
        #    still carries the owner's finished summary (what other replicas learn from):
        #    the summary is kept until an append writes it, not spent on the failed one.
        end = pb.EndWorkflowRequest(workflow_id=wid, tenant="t")
        proxy.lose(1, EVALSHA, "request")
        with pytest.raises(grpc.RpcError) as caught:
            call(stub.EndWorkflow, end, "e-6")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raw.xrange(keys.finished(0)) == []
        assert call(stub.EndWorkflow, end, "e-6") == 6
        assert logged() == [(s, f"e-{s}") for s in range(1, 7)]
        [(_, fields)] = raw.xrange(keys.finished(0))
        kind, workflow, _, app, _, rounds = json.loads(fields[b"r"])
        assert (kind, workflow, app) == ("x", f"t/{wid}", "app")
        assert rounds == [["coder"], ["reviewer"]]
    finally:
        channel.close()
        raw.close()
        a.stop()
