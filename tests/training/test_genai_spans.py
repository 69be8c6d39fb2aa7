"""Decoding OTLP spans (real opentelemetry-proto messages) into GenAiSpans; bad spans are
counted under a reason, never raised."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from pbkv.training.genai_spans import GenAiSpan, SpanLimits, decode_export

TRACE = bytes(range(1, 17))
ROOT_ID = b"\x01" * 8


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request(*spans: dict, resource: dict | None = None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, val in (resource or {"service.name": "research"}).items():
        rs.resource.attributes.append(kv(k, val))
    ss = rs.scope_spans.add()
    for i, fields in enumerate(spans):
        s = ss.spans.add(
            trace_id=fields.pop("trace_id", TRACE),
            span_id=fields.pop("span_id", bytes([0, 0, 0, 0, 0, 0, 0, i + 2])),
            parent_span_id=fields.pop("parent", ROOT_ID),
            name=fields.pop("name", f"span{i}"),
            start_time_unix_nano=fields.pop("start", 1_000_000_000),
            end_time_unix_nano=fields.pop("end", 3_500_000_000),
        )
        for e in fields.pop("events", ()):
            ev = s.events.add(name=e["name"])
            ev.attributes.extend(kv(k, val) for k, val in e["attributes"].items())
        s.attributes.extend(kv(k, val) for k, val in fields.items())
    return req


AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}


def test_a_genai_agent_span_keeps_what_the_mapping_needs() -> None:
    messages = [
        {"role": "assistant", "parts": [{"type": "text", "content": "plan: a, b"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "name": "x"}, {"type": "text", "content": "done"}],
        },
    ]
    out = decode_export(
        request(
            {
                **AGENT,
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 7,
                "gen_ai.output.messages": json.dumps(messages),
            },
            resource={"service.name": "svc", "pbkv.app": "research", "pbkv.tenant": "acme"},
        ),
        SpanLimits(),
    )
    assert out.rejected == {}
    assert out.spans == [
        GenAiSpan(
            trace_id=TRACE.hex(),
            span_id="0000000000000002",
            parent_id=ROOT_ID.hex(),
            name="span0",
            start_s=1.0,
            end_s=3.5,
            operation="invoke_agent",
            agent="planner",
            input_tokens=120,
            output_tokens=7,
            output_text="plan: a, b\n\ndone",
            tenant="acme",
            app="research",  # pbkv.app before service.name
        )
    ]


def test_output_text_from_the_older_completion_event_and_a_root_without_parent() -> None:
    event = {"name": "gen_ai.content.completion", "attributes": {"gen_ai.completion": "hello"}}
    out = decode_export(request({**AGENT, "events": [event], "parent": b""}), SpanLimits())
    (s,) = out.spans
    assert (s.output_text, s.parent_id, s.is_root, s.app) == ("hello", None, True, "research")
    listed = {
        "name": "gen_ai.content.completion",
        "attributes": {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "hi"}])},
    }
    assert (
        decode_export(request({**AGENT, "events": [listed]}), SpanLimits()).spans[0].output_text
        == "hi"
    )
    # not the messages' shape: no text (the span itself is fine)
    bad_json = decode_export(request({**AGENT, "gen_ai.output.messages": "{oops"}), SpanLimits())
    assert bad_json.spans[0].output_text is None and bad_json.rejected == {}


def test_bad_spans_are_counted_under_their_reason() -> None:
    limits = SpanLimits(max_attributes_per_span=3, max_name_chars=12, max_text_chars=4)
    out = decode_export(
        request(
            {**AGENT, "trace_id": b"\x00" * 16},
            {**AGENT, "trace_id": b"short"},
            {**AGENT, "span_id": b""},
            {**AGENT, "parent": b"\x01\x02"},
            {**AGENT, "start": 0},
            {**AGENT, "start": 5_000_000_000, "end": 4_000_000_000},
            {**AGENT, "a": 1, "b": 2},
            {**AGENT, "gen_ai.agent.name": "a-much-too-long-name"},
            {**AGENT, "gen_ai.agent.name": "bad\nname"},
            {**AGENT, "gen_ai.agent.name": 7},
            {**AGENT, "gen_ai.usage.output_tokens": -1},
            {**AGENT, "gen_ai.usage.input_tokens": "many"},
            {
                **AGENT,
                "gen_ai.output.messages": json.dumps(
                    [{"parts": [{"type": "text", "content": "abcdefgh"}]}]
                ),
            },
        ),
        limits,
    )
    assert out.rejected == {
        "bad trace_id (must be 16 bytes, not all zero)": 2,
        "bad span_id (must be 8 bytes, not all zero)": 1,
        "bad parent_span_id (must be 8 bytes, not all zero)": 1,
        "bad times (start_time_unix_nano is 0 or after end_time_unix_nano)": 2,
        "over max_attributes_per_span (3)": 1,
        "gen_ai.agent.name over max_name_chars (12)": 1,
        "gen_ai.agent.name has control characters": 1,
        "gen_ai.agent.name is not a string": 1,
        "gen_ai.usage.output_tokens is not a token count": 1,
        "gen_ai.usage.input_tokens is not a token count": 1,
    }
    (kept,) = out.spans  # the last one: its text cut to max_text_chars
    assert kept.output_text == "abcd"


def test_spans_over_the_export_cap_are_rejected() -> None:
    out = decode_export(
        request(AGENT.copy(), AGENT.copy(), AGENT.copy()), SpanLimits(max_spans_per_export=2)
    )
    assert len(out.spans) == 2
    assert out.rejected == {"over max_spans_per_export (2)": 1}
    assert out.rejected_count == 1


def test_a_bad_resource_rejects_its_spans() -> None:
    out = decode_export(
        request(AGENT.copy(), AGENT.copy(), resource={"pbkv.tenant": "a\tb"}), SpanLimits()
    )
    assert out.spans == []
    assert out.rejected == {"resource: pbkv.tenant has control characters": 2}
