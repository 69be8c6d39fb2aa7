"""The gRPC service end to end on loopback: real server, real CacheManager, real SQLite store,
real clients. Each bad-input case asserts the exact status code and that the message names
the field."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbkv.cache_manager.events import BlockStored, RequestStarted, Tier
from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.client import AsyncPbkvClient, PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.service.records import PromptPart, StepFinished
from pbkv.service.server_thread import ServerThread
from pbkv.service.stores.sqlite_store import SqliteStore
from pbkv.trace import Segment, Step, Workflow

Code = grpc.StatusCode


def workflow(wid: str, agents: list[str]) -> Workflow:
    return Workflow(wid, "app", tuple(Step(a, (Segment(f"system:{a}", 32),), 8) for a in agents))


TRAIN = [workflow(f"t{i}", ["plan", "code", "test", "code", "test"]) for i in range(5)]


def step(client, wid: str, agent: str, **fields):
    """StepStarted then StepFinished, as an orchestrator reports a step."""
    client.step_started(wid, agent)
    return client.step_finished(wid, agent, **fields)


def config(tmp_path: Path, **kw) -> ServiceConfig:
    base = dict(port=0, http_port=None, store_path=tmp_path / "traces.sqlite3", watch_model_s=None)
    base.update(kw)
    return ServiceConfig(**base)


@pytest.fixture
def server(tmp_path: Path):
    with ServerThread(config(tmp_path, max_context_bytes=1_000)) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread):
    with PbkvClient(server.target, timeout_s=10) as c:
        yield c


def fails(code: grpc.StatusCode, *words: str):
    """Context manager asserting a PbkvError with ``code`` whose message has ``words``."""

    class _Check:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            assert exc_type is PbkvError, f"expected {code.name}, got {exc_type}"
            assert exc.code == code, f"expected {code.name}, got {exc.code.name}: {exc.message}"
            for w in words:
                assert w in exc.message, f"{w!r} not in {exc.message!r}"
            return True

    return _Check()


def test_a_workflow_round_trip_is_recorded_in_order(server, client, tmp_path) -> None:
    seqs = [client.start_workflow("w1", "app", task="build it", now_s=0.0)]
    seqs.append(client.step_started("w1", "plan", now_s=0.0))
    client.step_finished(
        "w1",
        "plan",
        output_text="a plan",
        output_tokens=8,
        step_index=0,
        context_text="please plan",
        input_tokens=40,
        start_s=0.0,
        end_s=1.0,
        prompt=[("system:plan", 32), ("new", 8)],
    )
    [summary] = client.list_workflows()
    assert (summary.workflow_id, summary.app, summary.num_steps, summary.last_agent) == (
        "w1",
        "app",
        1,
        "plan",
    )
    seqs.append(client.end_workflow("w1", now_s=2.0))
    assert seqs == [1, 2, 4]
    assert client.list_workflows() == []
    stats = client.stats()
    assert stats["service"]["events_recorded"] == 4
    assert stats["service"]["active_workflows"] == 0
    server.stop()
    store = SqliteStore(tmp_path / "traces.sqlite3")
    events = list(store.events())
    assert [e.kind for e in events] == ["start", "step_started", "step_finished", "end"]
    assert events[2].event == StepFinished(
        "plan",
        None,
        0,
        "please plan",
        "a plan",
        40,
        8,
        0.0,
        1.0,
        None,
        (PromptPart("system:plan", 32), PromptPart("new", 8)),
    )


def test_bad_requests_get_the_right_code_and_name_the_field(client) -> None:
    with fails(Code.INVALID_ARGUMENT, "workflow_id"):
        client.start_workflow("", "app")
    with fails(Code.INVALID_ARGUMENT, "app"):
        client.start_workflow("w1", "")
    with fails(Code.INVALID_ARGUMENT, "now_s", "finite"):
        client.start_workflow("w1", "app", now_s=float("nan"))
    with fails(Code.NOT_FOUND, "workflow_id", "ghost"):
        client.step_finished("ghost", "plan")
    client.start_workflow("w1", "app")
    with fails(Code.ALREADY_EXISTS, "workflow_id", "w1"):
        client.start_workflow("w1", "app")
    with fails(Code.INVALID_ARGUMENT, "agent"):
        client.step_finished("w1", "")
    with fails(Code.INVALID_ARGUMENT, "context_text", "1000", "max_context_bytes"):
        client.step_finished("w1", "plan", context_text="x" * 1_001)
    with fails(Code.INVALID_ARGUMENT, "end_s"):
        client.step_finished("w1", "plan", start_s=2.0, end_s=1.0)
    with fails(Code.FAILED_PRECONDITION, "step_index 3", "next step_index is 0"):
        client.step_finished("w1", "plan", step_index=3)
    with fails(Code.FAILED_PRECONDITION, "'w1'", "plan", "started"):
        client.step_finished("w1", "plan")  # the manager: no step of 'plan' was started
    step(client, "w1", "plan", step_index=0)
    with fails(Code.FAILED_PRECONDITION, "step_index 0"):
        client.step_finished("w1", "code", step_index=0)
    client.end_workflow("w1")
    with fails(Code.FAILED_PRECONDITION, "workflow_id", "ended"):
        client.step_finished("w1", "code")
    with fails(Code.FAILED_PRECONDITION, "ended"):
        client.start_workflow("w1", "app")
    with fails(Code.INVALID_ARGUMENT, "tenant"):
        client.start_workflow("w2", "app", tenant="no/slash")


def test_tenants_cannot_see_or_end_each_others_workflows(server) -> None:
    with (
        PbkvClient(server.target, tenant="acme") as acme,
        PbkvClient(server.target, tenant="globex") as globex,
    ):
        acme.start_workflow("w1", "app")
        with fails(Code.NOT_FOUND, "w1", "globex"):
            globex.end_workflow("w1")
        with fails(Code.NOT_FOUND):
            globex.forecast("w1")
        with fails(Code.NOT_FOUND):
            globex.step_finished("w1", "plan")
        globex.start_workflow("w1", "app")  # same id, other tenant: a different workflow
        assert [w.tenant for w in acme.list_workflows()] == ["acme"]
        assert [w.tenant for w in globex.list_workflows()] == ["globex"]
        with fails(Code.PERMISSION_DENIED, "x-pbkv-tenant"):
            acme.end_workflow("w1", tenant="globex")
        acme.end_workflow("w1")
        assert [w.workflow_id for w in globex.list_workflows()] == ["w1"]


def test_forecasts_come_from_the_loaded_model_and_reload_keeps_streams(tmp_path) -> None:
    model_a = tmp_path / "model"
    model_b = model_a / "next"  # ReloadModel loads only from under the configured directory
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), model_a, {"version": "a"})
    save_model(PREDICTORS.create("frequency", workflows=TRAIN), model_b, {"version": "b"})
    with (
        ServerThread(config(tmp_path, model_path=model_a)) as srv,
        PbkvClient(srv.target) as client,
        EngineLinkClient(
            EngineLinkConfig(target=srv.target, engine_id="e0", gpu_blocks=64, cpu_blocks=0)
        ) as link,
    ):
        assert link.wait_connected(10)
        client.start_workflow("w1", "app")
        fc = step(client, "w1", "plan")
        assert fc is not None and fc.workflow_id == "w1"
        assert max(fc.agents, key=lambda a: a.p_next).agent == "code"  # markov1: plan->code
        assert client.forecast("w1") == fc
        assert client.reload_model(model_b) == "b"
        assert client.stats()["service"]["model_version"] == "b"
        with fails(Code.FAILED_PRECONDITION, "model_path", "does not exist"):
            client.reload_model(model_a / "nope")
        assert client.stats()["service"]["model_version"] == "b"  # a bad artifact changes nothing
        assert link.sync(10)
        assert link.stats().connects == 1  # the Attach stream survived both reloads


def test_engine_events_reach_the_manager_and_plans_come_back(server, client) -> None:
    link_cfg = EngineLinkConfig(
        target=server.target, engine_id="e0", gpu_blocks=64, cpu_blocks=16, tokens_per_block=16
    )
    with EngineLinkClient(link_cfg) as link:
        assert link.wait_connected(10)
        client.start_workflow("w1", "app")
        link.send(BlockStored("e0", (b"h1", b"h2"), None, 16, Tier.GPU))
        link.send(
            RequestStarted("e0", "r1", (b"h1", b"h2"), 32, 0, 0, "w1", "plan", "default", 0.0)
        )
        assert link.sync(10)
        plan = link.latest_plan()
        assert plan is not None and plan.engine_id == "e0"
        service = client.stats()["service"]
        assert (service["engine_events"], service["engine_event_errors"]) == (2, 0)
        assert service["engines"] == ["e0"]
        # A bad event is counted and dropped; the stream stays up.
        link.send(RequestStarted("e0", "", (), 0))
        assert link.sync(10)
        assert client.stats()["service"]["engine_event_errors"] == 1
        assert link.stats().connected


def test_restart_rebuilds_unfinished_workflows_from_the_store(tmp_path) -> None:
    cfg = config(tmp_path)
    with ServerThread(cfg) as srv, PbkvClient(srv.target) as client:
        client.start_workflow("done", "app")
        step(client, "done", "plan")
        client.end_workflow("done")
        client.start_workflow("live", "app", task="t")
        step(client, "live", "plan", step_index=0)
        step(client, "live", "code", step_index=1)
    with ServerThread(cfg) as srv, PbkvClient(srv.target) as client:
        assert srv.server.rebuilt_workflows == 1
        [live] = client.list_workflows()
        assert (live.workflow_id, live.task, live.num_steps, live.last_agent) == (
            "live",
            "t",
            2,
            "code",
        )
        state = srv.run(lambda: srv.server.servicer.manager.workflow_state("default/live"))
        assert [s.agent for s in state.steps] == ["plan", "code"]
        step(client, "live", "test", step_index=2)  # continues where it stopped
        with fails(Code.FAILED_PRECONDITION, "ended"):
            client.step_finished("done", "plan")


def test_bearer_token_is_required_except_for_health(tmp_path) -> None:
    with ServerThread(config(tmp_path, auth_token="s3cret")) as srv:
        with PbkvClient(srv.target) as anonymous, fails(Code.UNAUTHENTICATED, "bearer"):
            anonymous.start_workflow("w1", "app")
        with PbkvClient(srv.target, token="wrong") as wrong, fails(Code.UNAUTHENTICATED):
            wrong.stats()
        with PbkvClient(srv.target, token="s3cret") as ok:
            assert ok.start_workflow("w1", "app") == 1
        with grpc.insecure_channel(srv.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="pbkv.v1.Orchestrator"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "pbkv.v1.Orchestrator",
        "pbkv.v1.EngineLink",
        "pbkv.v1.Operator",
        "grpc.health.v1.Health",
    } <= services


def test_floods_are_refused_with_resource_exhausted(tmp_path) -> None:
    with (
        ServerThread(config(tmp_path, max_active_workflows=2)) as srv,
        PbkvClient(srv.target) as client,
    ):
        client.start_workflow("a", "app")
        client.start_workflow("b", "app")
        with fails(Code.RESOURCE_EXHAUSTED, "max_active_workflows"):
            client.start_workflow("c", "app")

    async def burst(target: str) -> list[str]:
        async with AsyncPbkvClient(target, timeout_s=20) as c:
            results = await asyncio.gather(
                *(c.start_workflow(f"w{i}", "app") for i in range(300)), return_exceptions=True
            )
        return [r.code.name if isinstance(r, PbkvError) else "OK" for r in results]

    with ServerThread(
        config(tmp_path, store_path=tmp_path / "b.sqlite3", max_pending_events=5)
    ) as srv:
        codes = asyncio.run(burst(srv.target))
        recorded = json.loads(json.dumps(srv.run(srv.server.servicer.stats_dict)))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert "RESOURCE_EXHAUSTED" in codes
    # Everything acknowledged is recorded; nothing refused is.
    assert recorded["service"]["events_recorded"] == codes.count("OK")


def test_session_stream_answers_in_order_and_survives_bad_events(server, client) -> None:
    async def main() -> tuple:
        async with AsyncPbkvClient(server.target, timeout_s=10) as c, c.session() as s:
            seqs = [await s.start_workflow("w1", "app")]
            # Pipelined: many events in flight on one stream, answered in order.
            seqs += await asyncio.gather(*(s.start_workflow(f"p{i}", "app") for i in range(20)))
            seqs.append(await s.step_started("w1", "plan"))
            fc = await s.step_finished("w1", "plan", step_index=0)
            errors = []
            for bad in (
                lambda: s.step_finished("w1", "code", step_index=5),
                lambda: s.start_workflow("w1", "app"),
                lambda: s.end_workflow("ghost"),
                lambda: s.step_started("w1", ""),
            ):
                try:
                    await bad()
                except PbkvError as exc:
                    errors.append((exc.code.name, exc.message))
            seqs.append(await s.end_workflow("w1"))  # the stream is still fine
            return seqs, errors, fc

    seqs, errors, fc = asyncio.run(main())
    assert seqs == [*range(1, 23), 24]
    assert fc is None or fc.workflow_id == "w1"
    assert [code for code, _ in errors] == [
        "FAILED_PRECONDITION",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "INVALID_ARGUMENT",
    ]
    assert "step_index 5" in errors[0][1] and "agent" in errors[3][1]
    assert client.stats()["service"]["events_recorded"] == 24


def test_the_dashboard_serves_the_services_stats_and_rpc_metrics(tmp_path) -> None:
    import urllib.request

    with ServerThread(config(tmp_path, http_port=0)) as srv, PbkvClient(srv.target) as client:
        client.start_workflow("w1", "app")
        with fails(Code.NOT_FOUND):
            client.end_workflow("ghost")
        url = srv.server.http_url
        stats = json.load(urllib.request.urlopen(url + "api/stats", timeout=10))
        metrics = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    service = {row["name"]: row["value"] for row in stats["service"]}  # the page's view rows
    assert service["events_recorded"] == 1 and service["active_workflows"] == 1
    assert 'pbkv_rpc_requests_total{code="OK",method="StartWorkflow"} 1.0' in metrics
    assert 'pbkv_rpc_requests_total{code="NOT_FOUND",method="EndWorkflow"} 1.0' in metrics


def test_attach_refuses_a_bad_hello_and_oversized_batches(tmp_path) -> None:
    from pbkv.v1 import pbkv_pb2 as pb
    from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

    def attach(target: str, *messages) -> grpc.RpcError:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.EngineLinkStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                for _ in stub.Attach(iter(messages), timeout=10):
                    pass
        return info.value

    with ServerThread(config(tmp_path, max_events_per_message=2)) as srv:
        err = attach(srv.target, pb.EngineMessage(hello=pb.AttachRequest(tokens_per_block=16)))
        assert err.code() == Code.INVALID_ARGUMENT and "hello.engine_id" in err.details()
        err = attach(
            srv.target, pb.EngineMessage(hello=pb.AttachRequest(engine_id="e0", gpu_blocks=8))
        )
        assert err.code() == Code.INVALID_ARGUMENT and "tokens_per_block" in err.details()
        hello = pb.EngineMessage(
            hello=pb.AttachRequest(engine_id="e0", gpu_blocks=8, tokens_per_block=16)
        )
        flood = pb.EngineMessage(
            events=[
                pb.EngineEvent(request_finished=pb.RequestFinished(request_id=f"r{i}"))
                for i in range(3)
            ]
        )
        err = attach(srv.target, hello, flood)
        assert err.code() == Code.RESOURCE_EXHAUSTED and "max_events_per_message" in err.details()
