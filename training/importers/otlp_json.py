"""Importer of saved OpenTelemetry spans: the OTLP JSON encoding, one
``ExportTraceServiceRequest`` per line (what the OpenTelemetry Collector's file exporter
writes), in a ``.json`` / ``.jsonl`` file or a folder of them.

Spans become workflows with the same mapping the live OTLP receiver uses
(``pbkv.training.span_workflows``): a trace is a workflow, its ``invoke_agent`` spans are its
steps in start order. All files are read before any trace is assembled, so spans of one
trace spread over several lines or files come together. A trace whose root span is missing
is still written (its steps are known). Spans carry no prompt text, so a step's prompt is one
``new`` segment of ``gen_ai.usage.input_tokens`` tokens (at least 1), as ``pbkv
export-traces`` writes steps reported without one.

OTLP JSON writes trace and span ids as hex (not protobuf JSON's base64); both are read.
Needs the ``opentelemetry-proto`` package (``pip install 'pbkv[otel]'``).
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.genai_spans import GenAiSpan, OtelMissing, SpanLimits, decode_export
from pbkv.training.importers.base import ImportOptions, ImportResult, ProgressFn, source_files
from pbkv.training.span_workflows import (
    AgentStep,
    TraceAssembler,
    TraceClosed,
    TraceOp,
    TraceOpened,
)

APP = "otel"
DEFAULT_TENANT = "default"
MAX_LINE_CHARS = 64 * 1024 * 1024  # a longer line is skipped unread
# An import holds every trace of its files at once: no cap on open traces beyond the spans.
IMPORT_LIMITS = SpanLimits(max_open_traces=1_000_000, max_held_spans=100_000)
_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def export_request_type() -> Any:
    """The generated ``ExportTraceServiceRequest`` class (``OtelMissing`` if not installed)."""
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:
        raise OtelMissing("--format otlp-json") from None
    return trace_service_pb2.ExportTraceServiceRequest


def parse_line(text: str, request_type: Any) -> Any:
    """One OTLP JSON line -> ``ExportTraceServiceRequest`` (``ValueError`` says why not)."""
    from google.protobuf import json_format

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for resource_spans in _list(data.get("resourceSpans")):
        for scope_spans in _list(_dict(resource_spans).get("scopeSpans")):
            for span in _list(_dict(scope_spans).get("spans")):
                _ids_to_base64(_dict(span))
    try:
        return json_format.ParseDict(data, request_type())
    except json_format.ParseError as exc:
        raise ValueError(f"not an OTLP JSON export ({exc})") from None


def import_otlp_json(src: Path, options: ImportOptions, progress: ProgressFn) -> ImportResult:
    request_type = export_request_type()
    result = ImportResult()
    spans: list[GenAiSpan] = []
    for path in progress(source_files(src, "*.json*")):
        result.files_read += 1
        spans.extend(_read_file(path, request_type, result))
    result.records_read = len(spans) + sum(
        n for reason, n in result.skipped.items() if reason.startswith("record:")
    )
    assembler = TraceAssembler(IMPORT_LIMITS, default_app=APP)
    assembled = assembler.add(spans, 0.0, DEFAULT_TENANT)
    ops = [*assembled.ops, *assembler.close_all()]
    for reason, n in (*assembled.rejected.items(), *assembled.ignored.items()):
        result.skipped[f"record: {reason}"] += n
    result.workflows = workflows_of(ops, options)
    for wf in result.workflows:
        wf.meta["source"] = str(src)
    return result


def workflows_of(ops: list[TraceOp], options: ImportOptions) -> list[Workflow]:
    """Trace-format workflows from the mapping's events, in order of their start."""
    opened: dict[tuple[str, str], TraceOpened] = {}
    steps: dict[tuple[str, str], list[Step]] = {}
    out = []
    for op in ops:
        key = (op.tenant, op.trace_id)
        match op:
            case TraceOpened():
                opened[key], steps[key] = op, []
            case AgentStep():
                steps[key].append(step_of(op.span, options))
            case TraceClosed():
                start = opened.pop(key)
                run = tuple(steps.pop(key))
                if run:
                    out.append((start, run, op.reason))
    out.sort(key=lambda item: item[0].start_s)
    return [
        Workflow(
            workflow_id=start.trace_id,
            app=start.app,
            steps=run,
            tenant=start.tenant,
            arrival_s=start.start_s,
            meta={"format": "otlp-json", "closed": reason},
        )
        for start, run, reason in out
    ]


def step_of(span: GenAiSpan, options: ImportOptions) -> Step:
    return Step(
        agent=span.agent or span.name,
        prompt=(Segment("new", max(1, span.input_tokens)),),
        output_tokens=span.output_tokens,
        start_s=span.start_s,
        end_s=span.end_s,
        output_text=options.text(span.output_text),
        meta={"span_id": span.span_id},
    )


def looks_like_otlp_json(path: Path) -> bool:
    """The file's first line is a JSON object with ``resourceSpans``."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(1024 * 1024)
    except (OSError, UnicodeDecodeError):
        return False
    return first.lstrip().startswith("{") and '"resourceSpans"' in first


# ---------------------------------------------------------------------------- internals
def _read_file(path: Path, request_type: Any, result: ImportResult) -> list[GenAiSpan]:
    spans: list[GenAiSpan] = []
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, read line by line
    except OSError as exc:
        result.skipped[f"file: unreadable ({exc.strerror})"] += 1
        return spans
    with f:
        try:
            for line in iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_CHARS:
                    result.skipped[f"line: over {MAX_LINE_CHARS} characters"] += 1
                    _skip_rest_of_line(f, line)
                    continue
                try:
                    request = parse_line(line, request_type)
                except ValueError as exc:
                    result.skipped[f"line: {exc}"] += 1
                    continue
                decoded = decode_export(request, IMPORT_LIMITS)
                spans.extend(decoded.spans)
                for reason, n in decoded.rejected.items():
                    result.skipped[f"record: {reason}"] += n
        except UnicodeDecodeError:
            result.skipped["file: not UTF-8 text"] += 1
    return spans


def _skip_rest_of_line(f, chunk: str) -> None:
    while chunk and not chunk.endswith("\n"):
        chunk = f.readline(MAX_LINE_CHARS)


def _ids_to_base64(span: dict[str, Any]) -> None:
    """OTLP JSON's hex ids -> the base64 protobuf JSON expects for bytes (in place)."""
    for name, size in _ID_FIELDS.items():
        value = span.get(name)
        if isinstance(value, str) and len(value) == 2 * size:
            # not hex: left as is (base64, or bad: the parse or the decoder says so)
            with contextlib.suppress(ValueError):
                span[name] = base64.b64encode(bytes.fromhex(value)).decode()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
