"""Regression tests for the hardening of issue 13 (server side), each against a real server in
process: engine identity and release, caps on every repeated field, clean errors for
undecodable and unauthenticated bytes, input ranges, the step cap."""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import grpc
import pytest

from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

Code = grpc.StatusCode
GARBAGE = b"\xff\xff\xff"  # not a protobuf message of any type (bad tag varint)


def config(tmp_path: Path, **kw) -> ServiceConfig:
    return ServiceConfig(
        **{
            "port": 0,
            "http_port": None,
            "watch_model_s": None,
            "store_path": tmp_path / "traces.sqlite3",
            **kw,
        }
    )


class Engine:
    """One raw Attach stream (sync gRPC): ``send`` messages, ``plan`` reads the next plan."""

    def __init__(
        self, channel: grpc.Channel, engine_id: str, gpu_blocks: int = 64, timeout_s: float = 10.0
    ) -> None:
        self._out: queue.Queue = queue.Queue()
        self._calls = pb_grpc.EngineLinkStub(channel).Attach(
            iter(self._out.get, None), timeout=timeout_s
        )
        self.send(
            pb.EngineMessage(
                hello=pb.AttachRequest(
                    engine_id=engine_id, gpu_blocks=gpu_blocks, cpu_blocks=0, tokens_per_block=16
                )
            )
        )

    def send(self, msg: pb.EngineMessage) -> None:
        self._out.put(msg)

    def plan(self) -> pb.CachePlan:
        return next(self._calls)

    def close(self) -> None:
        self._out.put(None)

    def synced(self, token: int) -> pb.CachePlan:
        """A barrier: the plan computed after everything sent before it was applied."""
        self.send(pb.EngineMessage(sync=token))
        while (plan := self.plan()).sync < token:
            pass
        return plan


def stored(*hashes: bytes) -> pb.EngineMessage:
    return pb.EngineMessage(
        events=[
            pb.EngineEvent(
                block_stored=pb.BlockStored(
                    block_hashes=list(hashes), tokens_per_block=16, tier=pb.TIER_GPU
                )
            )
        ]
    )


def directory_blocks(srv: ServerThread) -> int:
    return srv.run(lambda: srv.server.servicer.manager.stats().directory_blocks)


# ---------------------------------------------------------------------------- 1. identity
def test_a_second_attach_with_the_same_id_takes_over_and_ends_the_first(tmp_path) -> None:
    with ServerThread(config(tmp_path)) as srv, grpc.insecure_channel(srv.target) as ch:
        a = Engine(ch, "e0", timeout_s=5)
        a.plan()
        a.send(stored(b"a" * 32))
        a.synced(1)
        b = Engine(ch, "e0")
        b.plan()
        a.send(stored(b"x" * 32))  # after the takeover: never applied
        with pytest.raises(grpc.RpcError) as info:
            while True:
                a.plan()
        assert (info.value.code(), info.value.details()) == (
            Code.ABORTED,
            "engine id 'e0' was taken over by a newer attach",
        )
        b.send(stored(b"b" * 32))
        b.synced(2)
        assert directory_blocks(srv) == 1  # B's block only: A's old and late ones are gone
        counters = srv.server.engine_link.counters
        assert (counters["engine_takeovers"], srv.server.engine_link.attached_streams) == (1, 1)
        b.close()


def test_a_refused_hello_does_not_take_the_id_over(tmp_path) -> None:
    with ServerThread(config(tmp_path)) as srv, grpc.insecure_channel(srv.target) as ch:
        a = Engine(ch, "e0")
        a.plan()
        a.send(stored(b"a" * 32))
        a.synced(1)
        bad = pb_grpc.EngineLinkStub(ch).Attach(
            iter(
                [
                    pb.EngineMessage(
                        hello=pb.AttachRequest(engine_id="e0", gpu_blocks=0, tokens_per_block=16)
                    )
                ]
            ),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as info:
            next(bad)
        assert (info.value.code(), info.value.details()) == (
            Code.INVALID_ARGUMENT,
            "hello.gpu_blocks must be in [1, 16777216], got 0",
        )
        a.synced(2)  # still served
        assert directory_blocks(srv) == 1
        a.close()


# ---------------------------------------------------------------------------- 5. release
def test_engines_whose_stream_ended_are_released_after_the_grace(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, engine_grace_s=0.05)) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        for i in range(300):  # pod names change: every engine id is new
            e = Engine(ch, f"pod-{i}")
            e.send(stored(i.to_bytes(4, "big") * 8))
            e.synced(1)
            e.close()
            with pytest.raises(StopIteration):
                e.plan()
        deadline = time.monotonic() + 10
        while (
            srv.run(lambda: srv.server.servicer.manager.engine_ids())
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert srv.run(lambda: srv.server.servicer.manager.engine_ids()) == ()
        assert directory_blocks(srv) == 0
        assert srv.server.engine_link.counters["engines_released"] == 300


def test_an_engine_reattaching_within_the_grace_is_kept(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, engine_grace_s=0.5)) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        e = Engine(ch, "e0")
        e.plan()
        e.close()
        e2 = Engine(ch, "e0")
        e2.plan()
        time.sleep(0.8)
        assert srv.run(lambda: srv.server.servicer.manager.engine_ids()) == ("e0",)
        e2.close()


# ---------------------------------------------------------------------------- 2. caps
def test_a_session_request_over_the_event_cap_ends_the_stream_after_earlier_answers(
    tmp_path,
) -> None:
    with (
        ServerThread(config(tmp_path, max_session_events=8)) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        ok = pb.SessionRequest(
            events=[
                pb.SessionEvent(id=1, start=pb.StartWorkflowRequest(workflow_id="w", app="app"))
            ]
        )
        big = pb.SessionRequest(
            events=[
                pb.SessionEvent(id=i, start=pb.StartWorkflowRequest(workflow_id=f"w{i}", app="app"))
                for i in range(9)
            ]
        )
        replies = pb_grpc.OrchestratorStub(ch).Session(iter([ok, big, ok]), timeout=10)
        first = next(replies)
        assert (first.results[0].id, first.results[0].code) == (1, 0)
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
        assert (info.value.code(), info.value.details()) == (
            Code.INVALID_ARGUMENT,
            "events has 9 entries; the limit is 8 (max_session_events)",
        )
        assert srv.run(lambda: srv.server.servicer.manager.active_count()) == 1


def test_prompt_segments_over_the_cap_are_refused(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, max_prompt_segments=4)) as srv,
        PbkvClient(srv.target) as client,
    ):
        client.start_workflow("w", "app")
        client.step_started("w", "a")
        stub = pb_grpc.OrchestratorStub(client._channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.StepFinished(
                pb.StepFinishedRequest(
                    workflow_id="w", agent="a", prompt=[pb.PromptSegment(id="s", tokens=1)] * 5
                ),
                timeout=10,
            )
        assert (info.value.code(), info.value.details()) == (
            Code.INVALID_ARGUMENT,
            "prompt has 5 entries; the limit is 4 (max_prompt_segments)",
        )


def test_oversize_block_hashes_and_requests_beyond_gpu_blocks_are_not_applied(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, max_block_hash_bytes=32, max_blocks_per_event=8)) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        e = Engine(ch, "e0", gpu_blocks=4)
        e.plan()
        e.send(stored(b"h" * 33))  # too long a hash
        e.send(stored(*(bytes([i]) * 32 for i in range(9))))  # too many
        e.send(
            pb.EngineMessage(
                events=[
                    pb.EngineEvent(
                        request_started=pb.RequestStarted(
                            request_id="r", block_hashes=[bytes([i]) * 32 for i in range(5)]
                        )
                    )
                ]
            )
        )  # > gpu
        e.synced(1)
        assert directory_blocks(srv) == 0
        assert srv.server.engine_link.counters["engine_event_errors"] == 3
        e.close()


def test_grpc_refuses_messages_over_max_message_bytes(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, max_message_bytes=4096)) as srv,
        PbkvClient(srv.target) as client,
    ):
        with pytest.raises(PbkvError) as info:
            client.start_workflow("w", "app", task="t" * 5000)
        assert info.value.code == Code.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------------------- 6. errors
def test_undecodable_bytes_answer_invalid_argument_with_one_log_line(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with ServerThread(config(tmp_path)) as srv, grpc.insecure_channel(srv.target) as ch:
        call = ch.unary_unary("/pbkv.v1.Orchestrator/StartWorkflow")
        with pytest.raises(grpc.RpcError) as info:
            call(GARBAGE, timeout=10)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert "not a valid StartWorkflow message" in info.value.details()
    mine = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(mine) == 1 and mine[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unauthenticated_bytes_are_refused_before_they_are_decoded(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with (
        ServerThread(config(tmp_path, auth_token="s3cret")) as srv,
        grpc.insecure_channel(srv.target) as ch,
    ):
        for method in ("/pbkv.v1.Orchestrator/StartWorkflow", "/pbkv.v1.Operator/GetStats"):
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(method)(GARBAGE, timeout=10)
            assert info.value.code() == Code.UNAUTHENTICATED
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_corrupt_message_mid_session_ends_it_with_invalid_argument(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    start = pb.SessionRequest(
        events=[pb.SessionEvent(id=1, start=pb.StartWorkflowRequest(workflow_id="w", app="app"))]
    ).SerializeToString()
    later = pb.SessionRequest(
        events=[pb.SessionEvent(id=2, start=pb.StartWorkflowRequest(workflow_id="w2", app="app"))]
    ).SerializeToString()
    with ServerThread(config(tmp_path)) as srv, grpc.insecure_channel(srv.target) as ch:
        session = ch.stream_stream(
            "/pbkv.v1.Orchestrator/Session", response_deserializer=pb.SessionReply.FromString
        )
        replies = session(iter([start, GARBAGE, later]), timeout=10)
        assert next(replies).results[0].code == 0
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert srv.run(lambda: srv.server.servicer.manager.active_count()) == 1

        attach = ch.stream_stream(
            "/pbkv.v1.EngineLink/Attach", response_deserializer=pb.CachePlan.FromString
        )
        hello = pb.EngineMessage(
            hello=pb.AttachRequest(engine_id="e", gpu_blocks=4, tokens_per_block=16)
        ).SerializeToString()
        plans = attach(iter([hello, GARBAGE]), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            list(plans)
        assert info.value.code() == Code.INVALID_ARGUMENT
    # one short line per corrupt message, no traceback
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in lines] == [
        "/pbkv.v1.Orchestrator/Session: undecodable request: DecodeError",
        "/pbkv.v1.EngineLink/Attach: undecodable request: DecodeError",
    ]


# ---------------------------------------------------------------------------- 8. ranges
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.step_started("w", "a\x7f"), "agent contains control characters"),
        (lambda c: c.step_started("w", "a\x85"), "agent contains control characters"),
        (lambda c: c.step_started("w", "evil\u202egpj.exe"), "agent contains control characters"),
        (
            lambda c: c.step_started("w", "a", now_s=-1e308),
            "now_s must be a finite time in [0, 1e+10] s, got -1e+308",
        ),
        (
            lambda c: c.step_finished("w", "a", output_tokens=2**32 - 1),
            "output_tokens must be in [0, 16777216], got 4294967295",
        ),
    ],
)
def test_input_ranges(tmp_path, call, message: str) -> None:
    with ServerThread(config(tmp_path)) as srv, PbkvClient(srv.target) as client:
        client.start_workflow("w", "app")
        with pytest.raises(PbkvError) as info:
            call(client)
        assert (info.value.code, info.value.message) == (Code.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------- 3. steps cap
def test_steps_per_workflow_are_capped(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, max_steps_per_workflow=3)) as srv,
        PbkvClient(srv.target) as client,
    ):
        client.start_workflow("w", "app")
        for _ in range(3):
            client.step_started("w", "a")
            client.step_finished("w", "a")
        with pytest.raises(PbkvError) as info:
            client.step_started("w", "a")
        assert (info.value.code, info.value.message) == (
            Code.FAILED_PRECONDITION,
            "workflow_id 'w' has finished 3 steps; the limit is 3 "
            "(max_steps_per_workflow): end it and start another",
        )
        client.end_workflow("w")
