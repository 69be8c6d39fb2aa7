"""OpenTelemetry GenAI spans -> typed ``GenAiSpan``s: the decoding both the live OTLP receiver
(``service/otlp.py``) and the OTLP JSON importer (``importers/otlp_json.py``) use.

Input is an OTLP ``ExportTraceServiceRequest`` (the generated message, read by attribute
only: this module imports no OpenTelemetry package). Only what the span -> workflow mapping
(``span_workflows.py``) needs is kept:

    OTLP                                         GenAiSpan
    span.trace_id (16 bytes)                     trace_id (32 hex digits)
    span.span_id / parent_span_id                span_id / parent_id (None: a root span)
    start/end_time_unix_nano                     start_s / end_s
    gen_ai.operation.name                        operation (invoke_agent, chat, execute_tool...)
    gen_ai.agent.name                            agent
    gen_ai.usage.input_tokens / output_tokens    input_tokens / output_tokens
    gen_ai.output.messages (JSON, text parts)    output_text; else the gen_ai.completion
                                                 attribute of a gen_ai.content.completion event
    resource pbkv.tenant                         tenant (None: the receiver's default)
    resource pbkv.app, else service.name         app

Bad spans are never an exception: each is left out and counted under a reason
(``DecodedSpans.rejected``), and the caps of ``SpanLimits`` bound every loop.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pbkv.errors import UserError

AGENT = "gen_ai.agent.name"
OPERATION = "gen_ai.operation.name"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
OUTPUT_MESSAGES = "gen_ai.output.messages"
COMPLETION_EVENT = "gen_ai.content.completion"  # before gen_ai.output.messages (semconv <1.37)
COMPLETION = "gen_ai.completion"
TENANT = "pbkv.tenant"
APP_KEYS = ("pbkv.app", "service.name")
_WANTED = frozenset({AGENT, OPERATION, INPUT_TOKENS, OUTPUT_TOKENS, OUTPUT_MESSAGES})
MAX_TOKENS = 1 << 31  # a token count above this is not one


@dataclass(frozen=True, slots=True)
class SpanLimits:
    """Caps on what one export (or one imported line) may hold, and on the per-trace state
    the mapping keeps (``span_workflows.TraceAssembler``)."""

    max_spans_per_export: int = 10_000  # spans beyond it in one export are rejected
    max_attributes_per_span: int = 256  # a span with more is rejected
    max_events_per_span: int = 256  # a span with more is rejected
    max_name_chars: int = 256  # agent / operation / tenant / app names; longer: rejected
    max_text_chars: int = 1024 * 1024  # output text kept per span (the rest is cut)
    max_open_traces: int = 10_000  # traces being assembled; spans of more are rejected
    max_held_spans: int = 4_096  # agent spans one trace holds before emitting them
    hold_s: float = 0.0  # hold agent spans this long for late siblings (0: emit at once)
    trace_idle_s: float = 600.0  # a trace with no span for this long is ended
    recent_ended: int = 100_000  # ended trace ids remembered (their late spans: rejected)

    def __post_init__(self) -> None:
        for name in (
            "max_spans_per_export",
            "max_attributes_per_span",
            "max_events_per_span",
            "max_name_chars",
            "max_text_chars",
            "max_open_traces",
            "max_held_spans",
            "recent_ended",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("hold_s", "trace_idle_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.trace_idle_s <= self.hold_s:
            raise ValueError(f"trace_idle_s ({self.trace_idle_s}) must be > hold_s ({self.hold_s})")


@dataclass(frozen=True, slots=True)
class GenAiSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_s: float
    end_s: float
    operation: str | None = None
    agent: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    output_text: str | None = None
    tenant: str | None = None
    app: str | None = None

    @property
    def is_root(self) -> bool:
        return self.parent_id is None


@dataclass(slots=True)
class DecodedSpans:
    spans: list[GenAiSpan] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> spans

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())


class OtelMissing(ImportError, UserError):
    """OTLP support is used but the opentelemetry-proto package is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs the opentelemetry-proto package: pip install 'pbkv[otel]'")


class BadSpan(ValueError):
    """One span that cannot be used; the message is the reason it is counted under."""


def decode_export(request: Any, limits: SpanLimits) -> DecodedSpans:
    """The spans of an ``ExportTraceServiceRequest``, in the order they came."""
    out = DecodedSpans()
    seen = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes, limits, {TENANT, *APP_KEYS})
        try:
            tenant = _name(resource.get(TENANT), TENANT, limits)
            app = next((a for k in APP_KEYS if (a := _name(resource.get(k), k, limits))), None)
            bad_resource = None
        except BadSpan as exc:
            tenant = app = None
            bad_resource = f"resource: {exc}"
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                seen += 1
                if seen > limits.max_spans_per_export:
                    out.rejected[f"over max_spans_per_export ({limits.max_spans_per_export})"] += 1
                    continue
                if bad_resource is not None:
                    out.rejected[bad_resource] += 1
                    continue
                try:
                    out.spans.append(decode_span(span, limits, tenant, app))
                except BadSpan as exc:
                    out.rejected[str(exc)] += 1
    return out


def decode_span(span: Any, limits: SpanLimits, tenant: str | None, app: str | None) -> GenAiSpan:
    """One OTLP ``Span`` (``BadSpan`` names what is wrong with it)."""
    trace_id = _hex_id(span.trace_id, 16, "trace_id")
    span_id = _hex_id(span.span_id, 8, "span_id")
    parent_id = _hex_id(span.parent_span_id, 8, "parent_span_id") if span.parent_span_id else None
    start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
    if start_ns == 0 or end_ns < start_ns:
        raise BadSpan("bad times (start_time_unix_nano is 0 or after end_time_unix_nano)")
    if len(span.attributes) > limits.max_attributes_per_span:
        raise BadSpan(f"over max_attributes_per_span ({limits.max_attributes_per_span})")
    if len(span.events) > limits.max_events_per_span:
        raise BadSpan(f"over max_events_per_span ({limits.max_events_per_span})")
    attrs = _attributes(span.attributes, limits, _WANTED)
    output = _output_text(attrs.get(OUTPUT_MESSAGES))
    if output is None:
        output = next(
            (
                _completion_text(_attributes(e.attributes, limits, {COMPLETION}).get(COMPLETION))
                for e in span.events
                if e.name == COMPLETION_EVENT
            ),
            None,
        )
    return GenAiSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        name=span.name[: limits.max_name_chars],
        start_s=start_ns / 1e9,
        end_s=end_ns / 1e9,
        operation=_name(attrs.get(OPERATION), OPERATION, limits),
        agent=_name(attrs.get(AGENT), AGENT, limits),
        input_tokens=_tokens(attrs.get(INPUT_TOKENS), INPUT_TOKENS),
        output_tokens=_tokens(attrs.get(OUTPUT_TOKENS), OUTPUT_TOKENS),
        output_text=output[: limits.max_text_chars] if output else None,
        tenant=tenant,
        app=app,
    )


# ---------------------------------------------------------------------------- helpers
def _hex_id(raw: bytes, size: int, field_name: str) -> str:
    if len(raw) != size or not any(raw):
        raise BadSpan(f"bad {field_name} (must be {size} bytes, not all zero)")
    return raw.hex()


def _attributes(key_values: Any, limits: SpanLimits, wanted: set[str] | frozenset[str]):
    """``{key: python value}`` of the ``wanted`` keys among the first
    ``max_attributes_per_span`` attributes (scalars only; other kinds read as None)."""
    out: dict[str, Any] = {}
    for i, kv in enumerate(key_values):
        if i >= limits.max_attributes_per_span:
            break
        if kv.key in wanted:
            out[kv.key] = _scalar(kv.value)
    return out


def _scalar(value: Any) -> str | int | float | bool | None:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "int_value", "double_value", "bool_value"):
        return getattr(value, kind)
    return None


def _name(value: Any, key: str, limits: SpanLimits) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadSpan(f"{key} is not a string")
    if len(value) > limits.max_name_chars:
        raise BadSpan(f"{key} over max_name_chars ({limits.max_name_chars})")
    if not value.isprintable():
        raise BadSpan(f"{key} has control characters")
    return value


def _tokens(value: Any, key: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS:
        raise BadSpan(f"{key} is not a token count")
    return value


def _output_text(value: Any) -> str | None:
    """The text parts of ``gen_ai.output.messages`` (a JSON list of messages with ``parts``),
    joined by blank lines; None when absent or not that shape."""
    if not isinstance(value, str):
        return None
    try:
        messages = json.loads(value)
    except json.JSONDecodeError:
        return None
    texts = list(_text_parts(messages))
    return "\n\n".join(texts) if texts else None


def _text_parts(messages: Any) -> Iterator[str]:
    if not isinstance(messages, list):
        return
    for message in messages:
        parts = message.get("parts") if isinstance(message, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") == "text":
                content = part.get("content")
                if isinstance(content, str):
                    yield content


def _completion_text(value: Any) -> str | None:
    """An older ``gen_ai.completion`` value: plain text, or a JSON list of
    ``{"role", "content"}`` messages."""
    if not isinstance(value, str) or not value:
        return None
    try:
        messages = json.loads(value)
    except json.JSONDecodeError:
        return value
    if not isinstance(messages, list):
        return value
    texts = [
        m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
    ]
    return "\n\n".join(texts) if texts else None
