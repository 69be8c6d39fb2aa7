"""An orchestrator that already exports OpenTelemetry needs no pbkv code: the real SDK
(TracerProvider + BatchSpanProcessor + OTLPSpanExporter over gRPC, configured by the
standard OTEL_EXPORTER_OTLP_* variables) sends a multi-agent workflow of GenAI spans to a
real ``pbkv serve --otlp-port`` process. pbkv forecasts for the running workflow, records
its start, its steps with the agents in order and its end, and exports it as a trace."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from support import PBKV, ready_port, start_lines

from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.client import PbkvClient, PbkvError
from pbkv.training.importers import import_source
from pbkv.training.trace_io import read_workflows
from tests.cli_run import pbkv
from tests.otel_support import AGENTS, emit_workflow, provider

GRPC_PORT = 50141
OTLP_PORT = 4401
FIXTURE = Path(__file__).parents[1] / "training" / "otlp_spans.jsonl"


def wait_for(check, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"pbkv did not {what} within {timeout_s} s")


@pytest.mark.slow
def test_sdk_exporter_pointed_at_pbkv_serve(tmp_path: Path, monkeypatch) -> None:
    train = import_source("otlp-json", FIXTURE).workflows
    model = save_model(PREDICTORS.create("markov1", workflows=train), tmp_path / "model")
    store = tmp_path / "traces.sqlite3"
    proc = subprocess.Popen(
        [PBKV, "serve", "--port", str(GRPC_PORT), "--otlp-port", str(OTLP_PORT)]
        + ["--no-dashboard", "--store-path", str(store), "--model", str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tp = provider("research-app", tenant="acme")
    try:
        lines = start_lines(proc)
        assert ready_port(lines) == GRPC_PORT
        assert (
            f"pbkv serve: OTLP traces (TraceService/Export) on port {GRPC_PORT} and {OTLP_PORT}\n"
            in lines
        )
        # The orchestrator's side: only the standard OpenTelemetry configuration.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{OTLP_PORT}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=200))
        client = PbkvClient(f"127.0.0.1:{GRPC_PORT}", tenant="acme", timeout_s=10)

        def forecast_after(trace_id: str, steps: int):
            try:
                f = client.forecast(trace_id)
            except PbkvError as exc:  # its first span has not reached pbkv yet
                assert exc.code == grpc.StatusCode.NOT_FOUND, exc
                return None
            return f if f is not None and f.step_index == steps else None

        def while_running(trace_id: str) -> None:
            # the agents' spans reach pbkv on the processor's schedule; the root has not ended
            forecast = wait_for(lambda: forecast_after(trace_id, 4), "forecast after 4 steps")
            assert forecast.agents, "a forecast over the workflow's agents"
            (running,) = client.list_workflows()
            assert (running.tenant, running.app, running.last_agent) == (
                "acme",
                "research-app",
                "reviewer",
            )

        trace_id = emit_workflow(
            tp.get_tracer("orchestrator"), time.time_ns(), before_end=while_running
        )
        assert tp.force_flush(10_000)
        stats = wait_for(
            lambda: (s := client.stats()["otlp"])["workflows_ended"] == 1 and s, "end the workflow"
        )
        assert stats == {
            "spans_received": 10,
            "spans_rejected": 0,
            "spans_ignored": 6,  # 4 chat spans, 1 execute_tool, the root
            "workflows_started": 1,
            "steps": 4,
            "workflows_ended": 1,
            "open_traces": 0,
            "late_steps": 0,
        }
        assert client.list_workflows() == []
        client.close()
    finally:
        tp.shutdown()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    # What the store recorded, as the trace pbkv trains on.
    exported = tmp_path / "live.jsonl"
    run = pbkv("export-traces", "--store-path", store, "--out", exported)
    assert run.returncode == 0, run.stderr
    (wf,) = read_workflows(exported).workflows
    assert (wf.workflow_id, wf.tenant, wf.app, wf.agents) == (
        trace_id,
        "acme",
        "research-app",
        AGENTS,
    )
    assert [s.output_tokens for s in wf.steps] == [20, 21, 22, 23]
    assert wf.steps[0].output_text == "planner finished part 0"
