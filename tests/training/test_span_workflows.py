"""The span -> workflow mapping (TraceAssembler), step by step with an injected clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pbkv.training.genai_spans import GenAiSpan, SpanLimits
from pbkv.training.span_workflows import AgentStep, TraceAssembler, TraceClosed, TraceOpened

T = "ab" * 16  # a trace id


def span(span_id: str, start_s: float, end_s: float, *, parent: str | None = "root", **kw):
    return GenAiSpan(
        trace_id=kw.pop("trace_id", T),
        span_id=span_id,
        parent_id=parent,
        name=span_id,
        start_s=start_s,
        end_s=end_s,
        **kw,
    )


def agent(span_id: str, name: str, start_s: float, end_s: float, **kw) -> GenAiSpan:
    return span(span_id, start_s, end_s, operation="invoke_agent", agent=name, **kw)


ROOT = span("root", 0.0, 100.0, parent=None, operation="invoke_workflow", app="research")


def described(ops) -> list[str]:
    out = []
    for op in ops:
        match op:
            case TraceOpened():
                out.append(f"open {op.tenant}/{op.trace_id[:4]} {op.app} @{op.start_s:g}")
            case AgentStep():
                out.append(f"step {op.span.agent} @{op.span.start_s:g}")
            case TraceClosed():
                out.append(f"close @{op.end_s:g} ({op.reason})")
    return out


def checked(limits: SpanLimits = SpanLimits()) -> TraceAssembler:
    return TraceAssembler(limits)


def test_one_export_in_end_order_becomes_start_order_and_the_root_closes_last() -> None:
    a = checked()
    # The SDK exports in end order: children first, the root last.
    batch = [
        span("chat1", 1.5, 2.0, operation="chat", agent="planner"),
        agent("a2", "writer", 11.0, 20.0),
        agent("a1", "planner", 1.0, 10.0),
        span("tool", 12.0, 13.0, operation="execute_tool"),
        ROOT,
    ]
    out = a.add(batch, now_s=500.0, default_tenant="acme")
    assert described(out.ops) == [
        "open acme/abab research @0",  # the earliest start of the batch (the root's)
        "step planner @1",
        "step writer @11",
        "close @100 (root span ended)",
    ]
    assert out.rejected == {}
    assert out.ignored == {
        "not an agent step: chat": 1,
        "not an agent step: execute_tool": 1,
        "root span (the workflow itself)": 1,
    }
    assert a.open_traces == 0
    a.check_integrity()


def test_across_exports_steps_go_out_on_arrival_and_a_late_one_is_counted() -> None:
    a = checked()
    # export 1: the writer (started 11) ended first
    assert described(a.add([agent("a2", "writer", 11.0, 20.0)], 1.0, "t").ops) == [
        "open t/abab otel @11",  # no app on the spans: the default
        "step writer @11",
    ]
    # export 2: the planner started earlier but ended later: emitted, counted late
    assert described(a.add([agent("a1", "planner", 1.0, 30.0)], 2.0, "t").ops) == [
        "step planner @1"
    ]
    assert a.late_steps == 1
    # export 3: the root
    assert described(a.add([ROOT], 3.0, "t").ops) == ["close @100 (root span ended)"]
    # export 4: a span of the ended trace is rejected, not a new workflow
    out = a.add([agent("a3", "reviewer", 40.0, 50.0)], 4.0, "t")
    assert out.ops == []
    assert out.rejected == {"trace already ended (its root span came earlier)": 1}
    a.check_integrity()


def test_hold_s_reorders_siblings_that_arrive_within_the_hold() -> None:
    a = checked(SpanLimits(hold_s=5.0))
    assert described(a.add([agent("a2", "writer", 11.0, 20.0)], 100.0, "t").ops) == [
        "open t/abab otel @11"  # held until 105
    ]
    assert described(a.add([agent("a1", "planner", 1.0, 30.0)], 103.0, "t").ops) == []
    assert described(a.expire(104.9)) == []
    # 105: the writer's hold is over; the planner (received 103) is held until 108
    assert described(a.expire(105.0)) == ["step writer @11"]
    # the root releases whatever is still held, before the close
    assert described(a.add([ROOT], 106.0, "t").ops) == [
        "step planner @1",
        "close @100 (root span ended)",
    ]
    assert a.late_steps == 1
    a.check_integrity()


def test_with_hold_the_root_in_the_same_export_emits_in_start_order() -> None:
    a = checked(SpanLimits(hold_s=5.0))
    out = a.add([agent("a2", "writer", 11.0, 20.0), agent("a1", "planner", 1.0, 9.0), ROOT], 0, "t")
    assert described(out.ops) == [
        "open t/abab research @0",
        "step planner @1",
        "step writer @11",
        "close @100 (root span ended)",
    ]
    assert a.late_steps == 0


def test_a_trace_whose_root_never_comes_is_closed_when_idle() -> None:
    a = checked(SpanLimits(trace_idle_s=60.0))
    a.add([agent("a1", "planner", 1.0, 9.0)], 0.0, "t")
    other = "cd" * 16
    a.add([agent("b1", "writer", 2.0, 3.0, trace_id=other)], 30.0, "t")
    assert described(a.expire(59.9)) == []
    # 60: the first trace is idle (last span at 0); it ends at the latest end it saw
    assert described(a.expire(60.0)) == ["close @9 (idle)"]
    assert a.open_traces == 1
    assert described(a.expire(90.0)) == ["close @3 (idle)"]
    a.check_integrity()


def test_caps_reject_spans_with_a_reason() -> None:
    a = checked(SpanLimits(max_open_traces=1, max_held_spans=1, hold_s=1.0))
    a.add([agent("a1", "planner", 1.0, 2.0)], 0.0, "t")
    out = a.add([agent("a2", "writer", 3.0, 4.0)], 0.5, "t")
    assert out.rejected == {"over max_held_spans (1)": 1}
    out = a.add([agent("b1", "planner", 1.0, 2.0, trace_id="cd" * 16)], 0.6, "t")
    assert out.rejected == {"over max_open_traces (1)": 1}
    out = a.add([span("a3", 5.0, 6.0, operation="invoke_agent")], 0.7, "t")
    assert out.rejected == {"invoke_agent span without gen_ai.agent.name": 1}
    a.check_integrity()


def test_tenants_are_apart_and_a_one_agent_root_is_its_own_step() -> None:
    a = checked()
    solo = replace(ROOT, operation="invoke_agent", agent="helper")
    out = a.add([solo, replace(solo, tenant="other")], 0.0, "acme")
    assert described(out.ops) == [
        "open acme/abab research @0",
        "step helper @0",
        "close @100 (root span ended)",
        "open other/abab research @0",
        "step helper @0",
        "close @100 (root span ended)",
    ]
    assert out.ignored == {}


def test_close_all_ends_every_open_trace() -> None:
    a = checked(SpanLimits(hold_s=10.0))
    a.add([agent("a1", "planner", 1.0, 9.0)], 0.0, "t")
    assert described(a.close_all()) == ["step planner @1", "close @9 (flushed)"]
    assert a.open_traces == 0


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_open_traces must be > 0"):
        SpanLimits(max_open_traces=0)
    with pytest.raises(ValueError, match=r"trace_idle_s \(1.0\) must be > hold_s \(2.0\)"):
        SpanLimits(hold_s=2.0, trace_idle_s=1.0)
