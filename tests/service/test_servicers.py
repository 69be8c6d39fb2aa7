"""The split servicers: the manager is the one owner of which workflows and engines exist,
and the declared field rules check requests in order, naming the field."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from pbkv.service import validation as v
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb

CFG = ServiceConfig(max_name_bytes=8, max_context_bytes=16)


def test_the_service_answers_from_the_managers_workflows_and_engines(tmp_path: Path) -> None:
    cfg = ServiceConfig(
        port=0, http_port=None, store_path=tmp_path / "s.sqlite3", watch_model_s=None
    )
    with ServerThread(cfg) as srv, PbkvClient(srv.target, timeout_s=10) as client:
        manager = srv.server.servicer.manager
        # Started and attached in-process, not through the service: the service sees them.
        srv.run(
            lambda: manager.start_workflow("acme/w1", "app", tenant="acme", task="t", now_s=2.0)
        )
        srv.run(
            lambda: manager.attach_engine("local", gpu_blocks=4, cpu_blocks=0, tokens_per_block=16)
        )
        with PbkvClient(srv.target, tenant="acme", timeout_s=10) as acme:
            [w1] = acme.list_workflows()
            assert (w1.workflow_id, w1.tenant, w1.task, w1.num_steps, w1.started_s) == (
                "w1",
                "acme",
                "t",
                0,
                2.0,
            )
            acme.step_started("w1", "plan")
            acme.step_finished("w1", "plan", step_index=0)
            assert acme.list_workflows()[0].last_agent == "plan"
            srv.run(lambda: manager.end_workflow("acme/w1"))
            with pytest.raises(PbkvError) as info:
                acme.step_started("w1", "code")
            assert (info.value.code, info.value.message) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "workflow_id 'w1' has ended",
            )
            with pytest.raises(PbkvError) as info:
                acme.start_workflow("w1", "app")
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.list_workflows() == []  # the default tenant has none
        service = client.stats()["service"]
        assert (service["engines"], service["attached_streams"]) == (["local"], 0)
        assert service["active_workflows"] == 0


def test_rules_return_the_checked_fields_with_unset_optionals_as_none() -> None:
    request = pb.StepFinishedRequest(
        workflow_id="w",
        agent="a",
        output_text="out",
        end_s=2.0,
        prompt=[pb.PromptSegment(id="new", tokens=3)],
    )
    assert v.check(request, v.STEP_FINISHED, CFG) == {
        "workflow_id": "w",
        "agent": "a",
        "parallel_group": None,
        "phase": None,
        "context_text": "",
        "output_text": "out",
        "input_tokens": 0,
        "output_tokens": 0,
        "start_s": None,
        "end_s": 2.0,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"agent": "a"}, "workflow_id is required"),
        ({"workflow_id": "w"}, "agent is required"),
        (
            {"workflow_id": "w", "agent": "a" * 9},
            "agent is 9 bytes; the limit is 8 (max_name_bytes)",
        ),
        ({"workflow_id": "w\n", "agent": "a"}, "workflow_id contains control characters"),
        ({"workflow_id": "w", "agent": "a", "parallel_group": ""}, "parallel_group is required"),
        (
            {"workflow_id": "w", "agent": "a", "output_text": "x" * 17},
            "output_text is 17 bytes; the limit is 16 (max_context_bytes)",
        ),
        (
            {"workflow_id": "w", "agent": "a", "start_s": float("inf")},
            "start_s must be a finite time in [0, 1e+10] s, got inf",
        ),
        (
            {"workflow_id": "w", "agent": "a", "start_s": 2.0, "end_s": 1.0},
            "end_s (1.0) is before start_s (2.0)",
        ),
        (
            {
                "workflow_id": "w",
                "agent": "a",
                "prompt": [pb.PromptSegment(id="new"), pb.PromptSegment(id="")],
            },
            "prompt[1].id is required",
        ),
    ],
)
def test_each_rule_names_the_field(fields: dict, message: str) -> None:
    with pytest.raises(v.RpcFailure) as info:
        v.check(pb.StepFinishedRequest(**fields), v.STEP_FINISHED, CFG)
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_the_hello_rules_name_the_hello_fields() -> None:
    with pytest.raises(v.RpcFailure) as info:
        v.check(pb.AttachRequest(engine_id="e0", gpu_blocks=8), v.HELLO, CFG)
    assert info.value.message == "hello.tokens_per_block must be in [1, 4096], got 0"
    assert v.check(
        pb.AttachRequest(engine_id="e0", gpu_blocks=8, tokens_per_block=16), v.HELLO, CFG
    ) == {"engine_id": "e0", "gpu_blocks": 8, "cpu_blocks": 0, "tokens_per_block": 16}


def test_the_stats_give_each_engine_the_age_of_its_last_plan_until_it_is_released(
    tmp_path: Path,
) -> None:
    cfg = ServiceConfig(
        port=0,
        http_port=None,
        store_path=tmp_path / "s.sqlite3",
        watch_model_s=None,
        engine_grace_s=1.0,
    )
    with ServerThread(cfg) as srv, PbkvClient(srv.target, timeout_s=10) as client:
        assert client.stats()["plan_age_s_by_engine"] == {}
        link = EngineLinkClient(EngineLinkConfig(target=srv.target, engine_id="e1", gpu_blocks=8))
        try:
            assert link.wait_connected(10.0) and link.sync(10.0)
            assert link.latest_plan() is not None
            [(engine, age)] = client.stats()["plan_age_s_by_engine"].items()
            assert engine == "e1" and 0.0 <= age < 5.0
        finally:
            link.close()
        time.sleep(0.3)  # the stream ended: the engine has no plans now, its age grows
        assert client.stats()["plan_age_s_by_engine"]["e1"] >= 0.3
        deadline = time.monotonic() + 10.0
        while "e1" in client.stats()["plan_age_s_by_engine"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.stats()["plan_age_s_by_engine"] == {}  # released after the grace
