"""GenAI spans -> workflow events: the one span -> workflow mapping, shared by the live OTLP
receiver (``service/otlp.py``) and ``pbkv traces import --format otlp-json``.

    trace                     one workflow; workflow id = the trace id (32 hex digits)
    resource pbkv.tenant      its tenant (else the caller's default)
    first span of the trace   TraceOpened (start_s: the earliest start in that batch)
    invoke_agent span,        AgentStep: one finished step of agent gen_ai.agent.name,
      not the root              start/end from the span, in span start order
    root span (no parent)     TraceClosed at the root's end: a root span ends after all of
                              its children, so its arrival means the workflow is over
    any other span            ignored (chat, execute_tool, ... inside an agent's turn),
                              counted under "not an agent step: <operation>"

A root that is itself an ``invoke_agent`` span of a trace that had no agent step (a one-agent
workflow) is that workflow's one step.

Order. Spans of one batch are taken per trace in start order, the root last. An agent span
is held ``hold_s`` seconds (of the caller's clock) before it is emitted, so a sibling that
started earlier but ended (and was exported) later can still go first; the root's arrival
emits whatever is held. A span that arrives after a later-starting step was emitted goes
out anyway (steps report what happened; counted in ``late_steps``). Spans of a trace that
was closed are rejected ("trace already ended").

Bounds. At most ``max_open_traces`` traces are assembled at once and each holds at most
``max_held_spans`` spans; a trace without a span for ``trace_idle_s`` is closed (reason
"idle": its root never came); ``recent_ended`` closed trace ids are remembered.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from pbkv.training.genai_spans import AGENT, GenAiSpan, SpanLimits

STEP_OPERATION = "invoke_agent"
DEFAULT_APP = "otel"
TraceKey = tuple[str, str]  # (tenant, trace id)


@dataclass(frozen=True, slots=True)
class TraceOpened:
    tenant: str
    trace_id: str
    app: str
    start_s: float


@dataclass(frozen=True, slots=True)
class AgentStep:
    tenant: str
    trace_id: str
    span: GenAiSpan


@dataclass(frozen=True, slots=True)
class TraceClosed:
    tenant: str
    trace_id: str
    end_s: float
    reason: str  # "root span ended" | "idle" | "flushed"


TraceOp = TraceOpened | AgentStep | TraceClosed


@dataclass(slots=True)
class Assembled:
    """What one ``add`` produced: events in order, and the spans it did not use."""

    ops: list[TraceOp] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Trace:
    app: str
    last_seen_s: float
    end_s: float
    held: list[tuple[float, GenAiSpan]] = field(default_factory=list)  # (received_s, span)
    steps: int = 0
    last_step_start_s: float | None = None


class TraceAssembler:
    """Mechanism only: spans in (``add``), workflow events out, with the bounds of
    ``SpanLimits``. The clock is the caller's ``now_s`` (no sleeping, no threads)."""

    def __init__(self, limits: SpanLimits, *, default_app: str = DEFAULT_APP) -> None:
        self.limits = limits
        self.default_app = default_app
        self._open: OrderedDict[TraceKey, _Trace] = OrderedDict()  # least recently seen first
        self._ended: OrderedDict[TraceKey, None] = OrderedDict()
        self.late_steps = 0

    @property
    def open_traces(self) -> int:
        return len(self._open)

    def add(self, spans: Iterable[GenAiSpan], now_s: float, default_tenant: str) -> Assembled:
        """Take one batch (an export); its spans' tenant is ``span.tenant`` or
        ``default_tenant``."""
        out = Assembled()
        by_trace: dict[TraceKey, list[GenAiSpan]] = {}
        for span in spans:
            by_trace.setdefault((span.tenant or default_tenant, span.trace_id), []).append(span)
        for key, group in by_trace.items():
            group.sort(key=lambda s: (s.is_root, s.start_s, s.end_s))
            self._add_trace(key, group, now_s, out)
        out.ops.extend(self.expire(now_s))
        return out

    def expire(self, now_s: float) -> list[TraceOp]:
        """Emit held spans whose hold is over; close traces idle for ``trace_idle_s``."""
        ops: list[TraceOp] = []
        while self._open:  # least recently seen first: stop at the first one still live
            key, trace = next(iter(self._open.items()))
            if trace.last_seen_s + self.limits.trace_idle_s > now_s:
                break
            ops.extend(self._close(key, None, "idle"))
        if self.limits.hold_s > 0:
            for key, trace in self._open.items():
                if trace.held:
                    ops.extend(self._release(key, trace, now_s - self.limits.hold_s))
        return ops

    def close_all(self, reason: str = "flushed") -> list[TraceOp]:
        """Emit everything held and close every open trace (the end of an import)."""
        ops: list[TraceOp] = []
        for key in list(self._open):
            ops.extend(self._close(key, None, reason))
        return ops

    def check_integrity(self) -> None:
        assert len(self._open) <= self.limits.max_open_traces
        assert len(self._ended) <= self.limits.recent_ended
        for key, trace in self._open.items():
            assert key not in self._ended, key
            assert len(trace.held) <= self.limits.max_held_spans, key
        seen = [t.last_seen_s for t in self._open.values()]
        assert seen == sorted(seen), "open traces are kept least recently seen first"

    # ------------------------------------------------------------------ internals
    def _add_trace(
        self, key: TraceKey, group: list[GenAiSpan], now_s: float, out: Assembled
    ) -> None:
        if key in self._ended:
            out.rejected["trace already ended (its root span came earlier)"] += len(group)
            return
        trace = self._open.get(key)
        if trace is None:
            if len(self._open) >= self.limits.max_open_traces:
                out.rejected[f"over max_open_traces ({self.limits.max_open_traces})"] += len(group)
                return
            app = next((s.app for s in group if s.app), self.default_app)
            trace = _Trace(app, now_s, min(s.end_s for s in group))
            self._open[key] = trace
            out.ops.append(TraceOpened(key[0], key[1], app, min(s.start_s for s in group)))
        trace.last_seen_s = now_s
        self._open.move_to_end(key)
        for span in group:
            trace.end_s = max(trace.end_s, span.end_s)
            if span.is_root:
                ops = self._close(key, span, "root span ended")
                if not any(isinstance(op, AgentStep) and op.span is span for op in ops):
                    out.ignored["root span (the workflow itself)"] += 1
                out.ops.extend(ops)
                return
            if span.operation != STEP_OPERATION:
                out.ignored[
                    f"not an agent step: {span.operation or 'no gen_ai.operation.name'}"
                ] += 1
            elif span.agent is None:
                out.rejected[f"{STEP_OPERATION} span without {AGENT}"] += 1
            elif len(trace.held) >= self.limits.max_held_spans:
                out.rejected[f"over max_held_spans ({self.limits.max_held_spans})"] += 1
            else:
                trace.held.append((now_s, span))
        out.ops.extend(self._release(key, trace, now_s - self.limits.hold_s))

    def _release(self, key: TraceKey, trace: _Trace, received_by_s: float) -> list[TraceOp]:
        """The held spans received at or before ``received_by_s``, in start order."""
        ready = [s for r, s in trace.held if r <= received_by_s]
        if not ready:
            return []
        trace.held = [(r, s) for r, s in trace.held if r > received_by_s]
        ready.sort(key=lambda s: (s.start_s, s.end_s))
        ops: list[TraceOp] = []
        for span in ready:
            if trace.last_step_start_s is not None and span.start_s < trace.last_step_start_s:
                self.late_steps += 1
            trace.last_step_start_s = span.start_s
            trace.steps += 1
            ops.append(AgentStep(key[0], key[1], span))
        return ops

    def _close(self, key: TraceKey, root: GenAiSpan | None, reason: str) -> list[TraceOp]:
        trace = self._open.pop(key)
        ops = self._release(key, trace, math.inf)
        if (
            root is not None
            and trace.steps == 0
            and root.operation == STEP_OPERATION
            and root.agent
        ):
            ops.append(AgentStep(key[0], key[1], root))  # a one-agent workflow
        end_s = root.end_s if root is not None else trace.end_s
        ops.append(TraceClosed(key[0], key[1], end_s, reason))
        self._ended[key] = None
        while len(self._ended) > self.limits.recent_ended:
            self._ended.popitem(last=False)
        return ops
