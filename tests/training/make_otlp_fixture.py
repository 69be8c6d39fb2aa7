"""Write ``otlp_spans.jsonl`` beside this file: two runs of the ``tests/otel_support.py``
workflow traced by the real OpenTelemetry SDK, encoded by its OTLP exporter's encoder and
written as OTLP JSON lines of at most ``SPANS_PER_LINE`` spans (one line per export batch,
as the Collector's file exporter writes them; a trace spans several lines).

    .venv/bin/python -m tests.training.make_otlp_fixture     (from the repository root)
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otel_support import emit_workflow, hex_ids, provider

OUT = Path(__file__).with_name("otlp_spans.jsonl")
SPANS_PER_LINE = 4
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def main() -> None:
    exporter = InMemorySpanExporter()
    tp = provider("research-app")
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("pbkv-fixture")
    emit_workflow(tracer, T0_NS)
    emit_workflow(tracer, T0_NS + 60_000_000_000, ("planner", "writer", "reviewer", "writer"))
    spans = exporter.get_finished_spans()  # in the order they ended
    lines = []
    for i in range(0, len(spans), SPANS_PER_LINE):
        request = encode_spans(spans[i : i + SPANS_PER_LINE])
        lines.append(json.dumps(hex_ids(json_format.MessageToDict(request))))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(spans)} spans in {len(lines)} lines to {OUT}")


if __name__ == "__main__":
    main()
