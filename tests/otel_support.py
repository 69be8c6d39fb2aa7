"""A small multi-agent workflow traced with the real OpenTelemetry SDK, GenAI conventions.

One trace per run::

    invoke_workflow research            (root)
      invoke_agent planner
        chat gpt-tiny
      invoke_agent researcher
        chat gpt-tiny
        execute_tool web_search
      invoke_agent writer
        chat gpt-tiny
      ...

Used by the live OTLP test (``tests/service/test_otlp_live.py``) and by
``tests/training/make_otlp_fixture.py``, which wrote ``tests/training/otlp_spans.jsonl``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

AGENTS = ("planner", "researcher", "writer", "reviewer")
STEP_NS = 2_000_000_000  # each agent's turn: 2 s apart


def provider(service_name: str, tenant: str | None = None) -> TracerProvider:
    attrs = {"service.name": service_name}
    if tenant is not None:
        attrs["pbkv.tenant"] = tenant
    return TracerProvider(resource=Resource.create(attrs))


def output_messages(text: str) -> str:
    """``gen_ai.output.messages``: one assistant message of one text part."""
    return json.dumps(
        [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": "stop",
            }
        ]
    )


def emit_workflow(
    tracer: trace.Tracer,
    t0_ns: int,
    agents: Sequence[str] = AGENTS,
    *,
    before_end: Callable[[str], None] | None = None,
) -> str:
    """Trace one run of ``agents`` in turn starting at ``t0_ns``; returns its trace id (hex).
    ``before_end(trace_id)`` runs after the last agent span ended, before the root ends."""
    root = tracer.start_span(
        "invoke_workflow research",
        start_time=t0_ns,
        attributes={"gen_ai.operation.name": "invoke_workflow"},
    )
    trace_id = format(root.get_span_context().trace_id, "032x")
    root_ctx = trace.set_span_in_context(root)
    t = t0_ns
    for i, agent in enumerate(agents):
        text = f"{agent} finished part {i}"
        span = tracer.start_span(
            f"invoke_agent {agent}",
            context=root_ctx,
            start_time=t + 1_000,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
        )
        ctx = trace.set_span_in_context(span)
        chat = tracer.start_span(
            "chat gpt-tiny",
            context=ctx,
            start_time=t + 2_000,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.agent.name": agent,
                "gen_ai.usage.input_tokens": 100 + 10 * i,
                "gen_ai.usage.output_tokens": 20 + i,
                "gen_ai.output.messages": output_messages(text),
            },
        )
        chat.end(end_time=t + STEP_NS // 2)
        if agent == "researcher":
            tool = tracer.start_span(
                "execute_tool web_search",
                context=ctx,
                start_time=t + STEP_NS // 2 + 1_000,
                attributes={"gen_ai.operation.name": "execute_tool"},
            )
            tool.end(end_time=t + STEP_NS - 2_000)
        span.set_attribute("gen_ai.usage.input_tokens", 100 + 10 * i)
        span.set_attribute("gen_ai.usage.output_tokens", 20 + i)
        span.set_attribute("gen_ai.output.messages", output_messages(text))
        span.end(end_time=t + STEP_NS - 1_000)
        t += STEP_NS
    if before_end is not None:
        before_end(trace_id)
    root.end(end_time=t)
    return trace_id


def hex_ids(request_dict: dict) -> dict:
    """Protobuf JSON (base64 ids) -> OTLP JSON (hex ids), as the Collector's file exporter
    writes them (in place; returned for chaining)."""
    for rs in request_dict.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    return request_dict
