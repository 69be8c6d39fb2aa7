"""``pbkv traces import --format otlp-json``: spans the real OpenTelemetry SDK wrote
(``otlp_spans.jsonl``, made by ``make_otlp_fixture.py``) -> trace format v1."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pbkv.training.importers import detect_formats, import_source
from pbkv.training.importers.base import ImportOptions
from pbkv.training.importers.otlp_json import parse_line
from pbkv.training.trace_io import read_workflows
from tests.cli_run import pbkv

FIXTURE = Path(__file__).with_name("otlp_spans.jsonl")


def test_the_fixture_is_otlp_json_with_hex_ids_and_traces_split_over_lines() -> None:
    lines = FIXTURE.read_text().splitlines()
    traces_per_line = []
    for line in lines:
        request = parse_line(line, ExportTraceServiceRequest)
        ids = {
            s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
        }
        assert all(len(i) == 16 for i in ids)
        traces_per_line.append(ids)
        span = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert len(span["traceId"]) == 32 and int(span["traceId"], 16)  # hex, as OTLP JSON
    first = traces_per_line[0] & traces_per_line[1]
    assert first, "a trace's spans come in more than one line (export)"


def test_import_maps_agent_spans_to_steps_in_order() -> None:
    result = import_source("otlp-json", FIXTURE, ImportOptions())
    assert [(w.app, w.agents) for w in result.workflows] == [
        ("research-app", ("planner", "researcher", "writer", "reviewer")),
        ("research-app", ("planner", "writer", "reviewer", "writer")),
    ]
    first = result.workflows[0]
    assert len(first.workflow_id) == 32 and first.tenant == "default"
    assert first.arrival_s == 1_767_225_600.0
    assert first.meta["closed"] == "root span ended"
    step = first.steps[1]
    assert (step.output_text, step.output_tokens, step.input_tokens) == (
        "researcher finished part 1",
        21,
        110,
    )
    assert step.start_s < step.end_s <= first.steps[2].start_s
    # every span accounted for: 8 steps + the skipped records
    assert result.records_read == 19 == result.steps + sum(result.skipped.values())
    assert result.skipped == {
        "record: not an agent step: chat": 8,
        "record: not an agent step: execute_tool": 1,
        "record: root span (the workflow itself)": 2,
    }


def test_bad_lines_are_counted_and_base64_ids_are_read_too(tmp_path: Path) -> None:
    good = FIXTURE.read_text().splitlines()
    # protobuf's own JSON (base64 ids) of the same exports
    as_proto_json = [
        json.dumps(json_format.MessageToDict(parse_line(line, ExportTraceServiceRequest)))
        for line in good
    ]
    src = tmp_path / "spans.jsonl"
    src.write_text("\n".join([*as_proto_json, "not json", "[1]", '{"resourceSpans": 3}']) + "\n")
    result = import_source("otlp-json", src, ImportOptions(keep_text=False))
    assert [w.agents for w in result.workflows] == [
        w.agents for w in import_source("otlp-json", FIXTURE).workflows
    ]
    assert result.workflows[0].steps[0].output_text is None  # keep_text=False
    line_reasons = {k: n for k, n in result.skipped.items() if k.startswith("line:")}
    assert line_reasons.pop("line: not JSON (Expecting value)") == 1
    assert line_reasons.pop("line: not a JSON object") == 1
    ((reason, n),) = line_reasons.items()
    assert n == 1 and reason.startswith("line: not an OTLP JSON export (")


def test_detect_formats_and_the_cli(tmp_path: Path) -> None:
    assert detect_formats(FIXTURE) == ["otlp-json"]
    out = tmp_path / "traces.jsonl"
    run = pbkv("traces", "import", "--format", "otlp-json", FIXTURE, out, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "1 file, 19 agent records -> 2 workflows, 8 steps"
    assert run.stdout.splitlines()[-1] == f"wrote 2 workflows to {out}"
    assert [w.agents[0] for w in read_workflows(out).workflows] == ["planner", "planner"]
    wrong = pbkv("traces", "import", "--format", "chatdev", FIXTURE, tmp_path / "x.jsonl")
    assert wrong.returncode == 2
    assert "try --format otlp-json" in wrong.stderr
