"""OTLP TraceService/Export on a real server in process: spans in (raw OTLP requests through
the generated stub), workflow events in the manager and the trace store, partial success for
bad spans, tenants and roles, the OTLP port of its own, and the missing-extra error."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pbkv.cli import main
from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.auth import parse_token_file
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.config_file import build, to_toml
from pbkv.service.records import StepFinished, StepStarted, WorkflowEnded, WorkflowStarted
from pbkv.service.server_thread import ServerThread
from pbkv.training.genai_spans import SpanLimits
from pbkv.training.importers import import_source
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc
from tests.otel_support import AGENTS, emit_workflow, provider

T0_NS = 1_767_225_600_000_000_000


def config(tmp_path: Path, **kw) -> ServiceConfig:
    base = dict(
        port=0,
        http_port=None,
        watch_model_s=None,
        store_path=tmp_path / "traces.sqlite3",
        otlp=True,
    )
    return ServiceConfig(**{**base, **kw})


def sdk_spans(*runs: tuple[str, ...], tenant: str | None = None):
    """The spans of ``runs`` (agent orders) as the SDK ended them, and the trace ids."""
    exporter = InMemorySpanExporter()
    tp = provider("research-app", tenant)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("test")
    ids = [emit_workflow(tracer, T0_NS + i * 60 * 10**9, run) for i, run in enumerate(runs)]
    return exporter.get_finished_spans(), ids


def export(target: str, request: ExportTraceServiceRequest, token: str | None = None):
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        return stub.Export(request, timeout=10, metadata=metadata)


def recorded(server: ServerThread) -> list[str]:
    out = []
    for r in server.server.servicer.recorder.store.events():
        e = r.event
        match e:
            case WorkflowStarted():
                out.append(f"{r.tenant}/{r.workflow_id[:6]} start {e.app} @{e.now_s:g}")
            case StepStarted():
                out.append(f"{r.workflow_id[:6]} started {e.agent}")
            case StepFinished():
                out.append(
                    f"{r.workflow_id[:6]} finished {e.step_index} {e.agent} {e.output_tokens}"
                )
            case WorkflowEnded():
                out.append(f"{r.workflow_id[:6]} end @{e.now_s:g}")
    return out


def test_exports_become_workflow_events_in_order(tmp_path: Path) -> None:
    spans, (tid,) = sdk_spans(("planner", "writer"))
    w = tid[:6]
    # a model trained on the fixture's imported spans (planner -> researcher | writer ...)
    fixture = Path(__file__).parents[1] / "training" / "otlp_spans.jsonl"
    train = import_source("otlp-json", fixture).workflows
    model = save_model(PREDICTORS.create("markov1", workflows=train), tmp_path / "model")
    with ServerThread(config(tmp_path, model_path=model)) as server:
        # export 1: everything but the root (in end order); export 2: the root
        first = export(server.target, encode_spans(spans[:-1]))
        assert not first.HasField("partial_success")
        # running: the manager knows it, a forecast exists after its two steps
        with PbkvClient(server.target, timeout_s=10) as client:
            (summary,) = client.list_workflows()
            assert (summary.workflow_id, summary.app, summary.num_steps) == (tid, "research-app", 2)
            assert summary.last_agent == "writer"
            forecast = client.forecast(tid)
            assert forecast is not None and forecast.step_index == 2
            # after planner, writer the fixture's runs went on with reviewer
            assert max(forecast.agents, key=lambda a: a.p_within[0]).agent == "reviewer"
        export(server.target, encode_spans(spans[-1:]))
        assert recorded(server) == [
            f"default/{w} start research-app @{T0_NS / 1e9:g}",
            f"{w} started planner",
            f"{w} finished 0 planner 20",
            f"{w} started writer",
            f"{w} finished 1 writer 21",
            f"{w} end @{T0_NS / 1e9 + 4:g}",
        ]
        stats = server.run(lambda: server.server.servicer.stats_dict()["otlp"])
        assert stats == {
            "spans_received": 5,
            "spans_rejected": 0,
            "spans_ignored": 3,  # two chat spans and the root
            "workflows_started": 1,
            "steps": 2,
            "workflows_ended": 1,
            "open_traces": 0,
            "late_steps": 0,
        }
        # the same root again: its trace has ended
        again = export(server.target, encode_spans(spans[-1:]))
        assert again.partial_success.rejected_spans == 1
        assert again.partial_success.error_message == (
            "rejected spans: 1 trace already ended (its root span came earlier)"
        )


def test_bad_spans_are_a_partial_success_with_reasons(tmp_path: Path) -> None:
    spans, _ = sdk_spans(AGENTS)
    request = encode_spans(spans)
    ss = request.resource_spans[0].scope_spans[0]
    ss.spans[0].trace_id = b"\x00" * 16
    ss.spans[1].end_time_unix_nano = 1
    limits = SpanLimits(max_spans_per_export=len(spans) - 1)
    with ServerThread(config(tmp_path, otlp_limits=limits)) as server:
        response = export(server.target, request)
        assert response.partial_success.rejected_spans == 3
        assert response.partial_success.error_message == (
            "rejected spans: 1 bad trace_id (must be 16 bytes, not all zero); "
            "1 bad times (start_time_unix_nano is 0 or after end_time_unix_nano); "
            f"1 over max_spans_per_export ({len(spans) - 1})"
        )
        # a request that is not an OTLP message at all: INVALID_ARGUMENT, not a traceback
        with grpc.insecure_channel(server.target) as channel:
            raw = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_refused_workflow_rejects_its_spans(tmp_path: Path) -> None:
    spans, (first, second) = sdk_spans(("planner",), ("writer",))
    # both runs open (no roots), one workflow may run at a time
    agents_only = [s for s in spans if s.parent is not None]
    with ServerThread(config(tmp_path, max_active_workflows=1)) as server:
        response = export(server.target, encode_spans(agents_only))
        assert response.partial_success.rejected_spans == 1
        assert response.partial_success.error_message == (
            f"rejected spans: 1 workflow_id {second!r} is not a running workflow of tenant "
            "'default'"
        )
        assert [w.workflow_id for w in PbkvClient(server.target).list_workflows()] == [first]


TOKENS = '{"token": "acme-t", "tenant": "acme"}\n{"token": "engine-t", "role": "engine"}'


def test_tenant_tokens_fix_the_tenant_and_other_roles_are_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, token_grants=parse_token_file(TOKENS))
    mine, _ = sdk_spans(("planner",))
    theirs, _ = sdk_spans(("planner",), tenant="globex")
    with ServerThread(cfg) as server:
        for token, code in [(None, "UNAUTHENTICATED"), ("engine-t", "PERMISSION_DENIED")]:
            with pytest.raises(grpc.RpcError) as info:
                export(server.target, encode_spans(mine), token)
            assert info.value.code().name == code
        assert not export(server.target, encode_spans(mine), "acme-t").HasField("partial_success")
        refused = export(server.target, encode_spans(theirs), "acme-t")
        assert refused.partial_success.rejected_spans == len(theirs)
        assert refused.partial_success.error_message == (
            f"rejected spans: {len(theirs)} pbkv.tenant 'globex': the token is for tenant 'acme'"
        )
        assert {r.tenant for r in server.server.servicer.recorder.store.events()} == {"acme"}
        stats = server.run(lambda: server.server.servicer.stats_dict()["otlp"])
        assert (stats["spans_received"], stats["spans_rejected"]) == (
            len(mine) + len(theirs),
            len(theirs),
        )


def test_otlp_on_a_port_of_its_own(tmp_path: Path) -> None:
    spans, (tid,) = sdk_spans(("planner",))
    with ServerThread(config(tmp_path, otlp=False, otlp_port=0)) as server:
        otlp_target = f"127.0.0.1:{server.server.otlp_port}"
        assert server.server.otlp_port != server.port
        export(otlp_target, encode_spans(spans))
        assert recorded(server)[-1] == f"{tid[:6]} end @{T0_NS / 1e9 + 2:g}"
        # only OTLP there: the Orchestrator is on the main port
        with grpc.insecure_channel(otlp_target) as channel:
            stub = pb_grpc.OrchestratorStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetForecast(pb.GetForecastRequest(workflow_id="x"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_without_otlp_the_method_is_unimplemented(tmp_path: Path) -> None:
    spans, _ = sdk_spans(("planner",))
    with ServerThread(config(tmp_path, otlp=False)) as server:
        assert server.server.otlp is None
        with pytest.raises(grpc.RpcError) as info:
            export(server.target, encode_spans(spans))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(PbkvError):
            PbkvClient(server.target).forecast("none")


def test_config_file_knobs_round_trip() -> None:
    tree = {"service": {"otlp": True, "otlp_port": 4401, "otlp_limits": {"hold_s": 1.5}}}
    cfg = build(tree)
    assert (cfg.otlp_enabled, cfg.otlp_port, cfg.otlp_limits.hold_s) == (True, 4401, 1.5)
    text = to_toml(cfg)
    assert "[service.otlp_limits]\n" in text and "hold_s = 1.5" in text
    import tomllib

    assert build(tomllib.loads(text)) == cfg


def test_serve_with_otlp_but_without_the_package_is_one_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.trace.v1", None)
    assert main(["serve", "--otlp", "--port", "0", "--no-dashboard"]) == 2
    assert capsys.readouterr().err == (
        "pbkv: error: OTLP ingestion (--otlp, --otlp-port, otlp = true) needs the "
        "opentelemetry-proto package: pip install 'pbkv[otel]'\n"
    )
