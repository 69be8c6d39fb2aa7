"""OTLP traces in: ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` -> the
Orchestrator's typed workflow events. OTLP protobuf stops here.

An orchestrator that already exports OpenTelemetry GenAI spans needs no pbkv code: its OTLP
exporter points at pbkv (docs/otel.md). Per export: decode the spans
(``training.genai_spans``), assemble them into workflow events with the mapping the
``otlp-json`` importer also uses (``training.span_workflows``), apply each event through the
Orchestrator servicer's checks (``OrchestratorServicer.submit``: the same caps, the same
trace store), and answer once the store has committed them. Spans that are not used because
they are bad, late or over a cap are counted in ``partial_success.rejected_spans`` with the
reasons in ``error_message`` (the OTLP spec's partial success); spans that are fine but no
step (chat, execute_tool inside an agent's turn) are not rejected, only counted in stats.

Tenant: the resource attribute ``pbkv.tenant``, else the call's (a tenant token's own, or
``x-pbkv-tenant`` metadata), else ``default``. A tenant token's spans may not claim another.

Needs the ``opentelemetry-proto`` package (the ``otel`` extra); ``pbkv serve --otlp`` without
it is a ``UserError`` (``import_trace_service``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pbkv.service import records as ev
from pbkv.service import validation as v
from pbkv.service.auth import CALLER
from pbkv.service.recorder import RecorderFull
from pbkv.service.servicers.orchestrator import OrchestratorServicer
from pbkv.service.servicers.wiring import WorkflowKey, metadata_tenant, rpc
from pbkv.service.stores.base import StoreError
from pbkv.service.validation import RpcFailure
from pbkv.training.genai_spans import GenAiSpan, OtelMissing, SpanLimits, decode_export
from pbkv.training.span_workflows import (
    AgentStep,
    TraceAssembler,
    TraceClosed,
    TraceOp,
    TraceOpened,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"
MAX_REASONS = 8  # reasons listed in one error_message
TICK_S = 1.0  # how often held spans and idle traces are looked at


def import_trace_service() -> tuple[Any, Any]:
    """(trace_service_pb2, trace_service_pb2_grpc) or ``OtelMissing`` saying what to install."""
    try:
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )
    except ImportError:
        raise OtelMissing("OTLP ingestion (--otlp, --otlp-port, otlp = true)") from None
    return trace_service_pb2, trace_service_pb2_grpc


class OtlpReceiver:
    """Spans in, orchestrator events out; mechanism for ``TraceService`` (no gRPC types but
    the request it decodes). ``stats()`` is the ``otlp`` section of GetStats."""

    def __init__(
        self,
        orchestrator: OrchestratorServicer,
        limits: SpanLimits,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.orchestrator = orchestrator
        self.limits = limits
        self.assembler = TraceAssembler(limits)
        self._wall = wall_clock
        self.counts: Counter[str] = Counter()

    async def export(self, request: Any, tenant: str, *, fixed: bool) -> tuple[int, str]:
        """Take one export; returns (rejected spans, error message or "")."""
        decoded = decode_export(request, self.limits)
        self.counts["spans_received"] += len(decoded.spans) + decoded.rejected_count
        rejected = decoded.rejected
        spans = [s for s in decoded.spans if self._tenant_ok(s, tenant, fixed, rejected)]
        assembled = self.assembler.add(spans, self._wall(), tenant)
        rejected.update(assembled.rejected)
        self.counts["spans_ignored"] += sum(assembled.ignored.values())
        await self._apply(assembled.ops, rejected)
        count = sum(rejected.values())
        self.counts["spans_rejected"] += count
        return count, _message(rejected)

    async def tick(self) -> None:
        """Emit what the assembler's hold and idle timers release (``run`` calls it)."""
        rejected: Counter[str] = Counter()
        await self._apply(self.assembler.expire(self._wall()), rejected)
        self.counts["spans_rejected"] += sum(rejected.values())

    async def run(self, period_s: float = TICK_S) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.tick()
            except Exception:  # the timer must outlive one bad tick (logged, with its traceback)
                log.exception("OTLP tick failed")

    def stats(self) -> dict[str, Any]:
        return {
            **{k: self.counts[k] for k in ("spans_received", "spans_rejected", "spans_ignored")},
            **{k: self.counts[k] for k in ("workflows_started", "steps", "workflows_ended")},
            "open_traces": self.assembler.open_traces,
            "late_steps": self.assembler.late_steps,
        }

    # ------------------------------------------------------------------ internals
    def _tenant_ok(self, span: GenAiSpan, tenant: str, fixed: bool, rejected: Counter) -> bool:
        if span.tenant is None:
            return True
        if fixed and span.tenant != tenant:
            rejected[f"pbkv.tenant {span.tenant!r}: the token is for tenant {tenant!r}"] += 1
            return False
        try:
            v.tenant(span.tenant, None)
        except RpcFailure as exc:
            rejected[f"pbkv.tenant: {exc.message}"] += 1
            return False
        return True

    async def _apply(self, ops: list[TraceOp], rejected: Counter[str]) -> None:
        """Submit each event in order; await their commits. A refused event's span (a step,
        or the root that ends the trace) is counted rejected under the refusal."""
        pending = []
        for op in ops:
            key = WorkflowKey(op.tenant, op.trace_id)
            spans = 1 if isinstance(op, AgentStep) or _by_root(op) else 0
            try:
                futures = [self.orchestrator.submit(key, e)[0] for e in self._events(op)]
            except RpcFailure as exc:
                rejected[exc.message.replace(key.manager_id, key.workflow_id)] += spans
                continue
            except RecorderFull as exc:
                rejected[str(exc)] += spans
                continue
            pending.extend((future, spans if i == 0 else 0) for i, future in enumerate(futures))
            self.counts[_COUNTER[type(op)]] += 1
        for future, spans in pending:
            try:
                await future
            except StoreError as exc:
                rejected[f"trace store: {exc}"] += spans

    def _events(self, op: TraceOp) -> list[ev.WorkflowEvent]:
        """The orchestrator events of one mapping event: an agent step is a started and a
        finished step (the manager tracks which agents are running)."""
        config = self.orchestrator.config
        match op:
            case TraceOpened():
                return [ev.WorkflowStarted(_name(op.app, "app", config), "", op.start_s)]
            case AgentStep():
                span = op.span
                agent = _name(span.agent or "", "gen_ai.agent.name", config)
                output = span.output_text or ""
                if len(output.encode()) > config.max_context_bytes:
                    output = output.encode()[: config.max_context_bytes].decode(errors="ignore")
                start_s = v.time_s(span.start_s, "start_time_unix_nano")
                finished = ev.StepFinished(
                    agent,
                    output_text=output,
                    input_tokens=span.input_tokens,
                    output_tokens=span.output_tokens,
                    start_s=start_s,
                    end_s=v.time_s(span.end_s, "end_time_unix_nano"),
                )
                return [ev.StepStarted(agent, now_s=start_s), finished]
            case TraceClosed():
                return [ev.WorkflowEnded(v.time_s(op.end_s, "end_time_unix_nano"))]
        raise AssertionError(op)


_COUNTER = {TraceOpened: "workflows_started", AgentStep: "steps", TraceClosed: "workflows_ended"}


def _by_root(op: TraceOp) -> bool:
    return isinstance(op, TraceClosed) and op.reason == "root span ended"


def _name(value: str, field: str, config) -> str:
    return v.name(value, field, config.max_name_bytes)


def _message(rejected: Counter[str]) -> str:
    reasons = [f"{n} {reason}" for reason, n in rejected.most_common() if n]
    more = len(reasons) - MAX_REASONS
    text = "; ".join(reasons[:MAX_REASONS])
    return f"rejected spans: {text}" + (f"; and {more} more reasons" if more > 0 else "")


def trace_service(receiver: OtlpReceiver):
    """The ``TraceService`` servicer (generated base from opentelemetry-proto) over
    ``receiver``, and the function that adds it to a server."""
    pb, pb_grpc = import_trace_service()

    class TraceServiceServicer(pb_grpc.TraceServiceServicer):
        wiring = receiver.orchestrator.wiring  # for @rpc: statuses and RPC metrics

        @rpc("TraceService.Export")
        async def Export(self, request, context):  # noqa: N802
            tenant = v.tenant("", metadata_tenant(context))
            who = CALLER.get()
            fixed = who is not None and who.tenant is not None
            count, message = await receiver.export(request, tenant, fixed=fixed)
            response = pb.ExportTraceServiceResponse()
            if count:
                response.partial_success.rejected_spans = count
                response.partial_success.error_message = message
            return response

    return TraceServiceServicer(), pb_grpc.add_TraceServiceServicer_to_server
