"""The Orchestrator service: workflow events in, forecasts out. Protobuf stops here.

Each event: check its fields (``validation``) -> apply the typed event to the manager ->
hand it to the recorder (no ``await`` between the two, so the trace store sees events in the
manager's order) -> await the store's commit -> answer. Nothing is acknowledged before it is
durable. The manager alone knows which workflows exist; a restart replays the store's typed
events into it with the same ``apply_event``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from pbkv.predictor.forecast import Forecast, ObservedStep
from pbkv.service import records as ev
from pbkv.service import validation as v
from pbkv.service.convert import ForecastWriter
from pbkv.service.cpu_meter import SAMPLE_EVERY, CpuMeter
from pbkv.service.recorder import Recorder
from pbkv.service.records import EventRecord
from pbkv.service.servicers.session_stream import Answer, SessionStream
from pbkv.service.servicers.wiring import (
    EVENT_ID,
    Wiring,
    WorkflowKey,
    call_tenant,
    manager_errors,
    rpc,
)
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_UNARY = {
    "start": "StartWorkflow",
    "step_started": "StepStarted",
    "step_finished": "StepFinished",
    "end": "EndWorkflow",
}


def apply_event(manager, key: WorkflowKey, event: ev.WorkflowEvent) -> Forecast | None:
    """Apply one workflow event to the manager (live and on restart); a finished step
    returns the forecast made after it."""
    wid = key.manager_id
    match event:
        case ev.WorkflowStarted():
            manager.start_workflow(
                wid, event.app, tenant=key.tenant, task=event.task, now_s=event.now_s
            )
        case ev.StepStarted():
            manager.step_started(
                wid, event.agent, parallel_group=event.parallel_group, now_s=event.now_s
            )
        case ev.StepFinished():
            return manager.step_finished(
                wid,
                ObservedStep(
                    event.agent,
                    event.parallel_group,
                    event.output_text or None,
                    event.output_tokens,
                    event.start_s,
                    event.end_s,
                    event.phase,
                ),
            )
        case ev.WorkflowEnded():
            manager.end_workflow(wid, now_s=event.now_s)
    return None


class OrchestratorServicer(SessionStream, pb_grpc.OrchestratorServicer):
    def __init__(
        self, wiring: Wiring, recorder: Recorder, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.wiring = wiring
        self.manager = wiring.manager
        self.config = wiring.config
        self.recorder = recorder
        self._wall = wall_clock
        # Cluster mode: a ``cluster.forward.Forwarder`` sends calls for workflows another
        # replica owns to it; None: this process owns every workflow.
        self.router = None
        self._appliers = {
            "start": self._start,
            "step_started": self._step_started,
            "step_finished": self._step_finished,
            "end": self._end,
        }
        # The steps of an event's path (``instrument`` wraps them with CPU accounting).
        self._forecasts = ForecastWriter()
        self._check, self._apply, self._to_pb = v.check, apply_event, self._forecast_pb
        self._meter: CpuMeter | None = None

    def instrument(self, meter: CpuMeter) -> None:
        """Account the CPU of validation, manager (with its predictor), the forecast's
        conversion to protobuf and the store's appends in ``meter`` (``service/cpu_meter``)."""
        self._meter = meter
        every = SAMPLE_EVERY
        self._check = meter.timed("validation", v.check, every=every)
        self.manager._predict = meter.timed("predictor", self.manager._predict, every=every)
        apply = meter.timed("manager", apply_event, every=every)

        def counted(*args):
            meter.events += 1
            return apply(*args)

        self._apply = counted
        self._to_pb = meter.timed("convert", self._forecast_pb, every=every)
        store = self.recorder.store
        store.append = meter.timed("store", store.append)
        meter.commits = lambda: self.recorder.stats().commits

    # ------------------------------------------------------------------ events
    # Each of these validates, updates the manager and queues the event for the store,
    # without awaiting: the unary RPCs and the Session stream share them, and the store sees
    # events in the manager's order. They return (commit future, forecast message or None).
    def _start(self, request: pb.StartWorkflowRequest, tenant: str):
        f = self._check(request, v.START, self.config)
        key = WorkflowKey(tenant, f["workflow_id"])
        self._check_new(key)
        return self._commit(key, ev.WorkflowStarted(f["app"], f["task"], f["now_s"]))

    def _check_new(self, key: WorkflowKey) -> None:
        """A workflow may start: its id is new to the tenant and there is room for it."""
        if self.manager.has_workflow(key.manager_id):
            raise RpcFailure(
                grpc.StatusCode.ALREADY_EXISTS,
                f"workflow_id {key.workflow_id!r} is already running",
            )
        if self.manager.has_ended(key.manager_id):
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"workflow_id {key.workflow_id!r} has ended; workflow ids are not reused",
            )
        active = self.manager.active_count()
        if active >= self.config.max_active_workflows:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{active} workflows are running (max_active_workflows)",
            )

    def _step_started(self, request: pb.StepStartedRequest, tenant: str):
        f = self._check(request, v.STEP_STARTED, self.config)
        key = WorkflowKey(tenant, f["workflow_id"])
        self._steps_done(key, capped=True)
        return self._commit(key, ev.StepStarted(f["agent"], f["parallel_group"], f["now_s"]))

    def _step_finished(self, request: pb.StepFinishedRequest, tenant: str):
        f = self._check(request, v.STEP_FINISHED, self.config)
        key = WorkflowKey(tenant, f["workflow_id"])
        done = self._steps_done(key, capped=True)
        if request.HasField("step_index") and request.step_index != done:
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"step_index {request.step_index} is out of order: workflow "
                f"{key.workflow_id!r} has finished {done} steps, so the next "
                f"step_index is {done}",
            )
        return self._commit(
            key,
            ev.StepFinished(
                f["agent"],
                f["parallel_group"],
                done,
                f["context_text"],
                f["output_text"],
                request.input_tokens,
                request.output_tokens,
                f["start_s"],
                f["end_s"],
                f["phase"],
                tuple(ev.PromptPart(s.id, s.tokens) for s in request.prompt)
                if request.prompt
                else (),
            ),
        )

    def _end(self, request: pb.EndWorkflowRequest, tenant: str):
        f = self._check(request, v.END, self.config)
        key = WorkflowKey(tenant, f["workflow_id"])
        self._steps_done(key)
        return self._commit(key, ev.WorkflowEnded(f["now_s"]))

    def submit(self, key: WorkflowKey, event: ev.WorkflowEvent):
        """Apply a typed event from another edge (the OTLP receiver) with the checks of the
        matching RPC; a finished step gets the next ``step_index``. Returns (commit future,
        forecast message or None); ``RpcFailure`` when the event is refused."""
        match event:
            case ev.WorkflowStarted():
                self._check_new(key)
            case ev.StepFinished():
                done = self._steps_done(key, capped=True)
                event = dataclasses.replace(event, step_index=done)
            case ev.StepStarted():
                self._steps_done(key, capped=True)
            case _:
                self._steps_done(key)
        return self._commit(key, event)

    def _steps_done(self, key: WorkflowKey, *, capped: bool = False) -> int:
        """The running workflow's finished steps (NOT_FOUND / FAILED_PRECONDITION if none);
        ``capped``: FAILED_PRECONDITION once it has ``max_steps_per_workflow``."""
        with manager_errors(key):
            done = self.manager.workflow_state(key.manager_id).step_index
        limit = self.config.max_steps_per_workflow
        if capped and done >= limit:
            raise RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"workflow_id {key.workflow_id!r} has finished {done} steps; the "
                f"limit is {limit} (max_steps_per_workflow): end it and start "
                f"another",
            )
        return done

    def _commit(self, key: WorkflowKey, event: ev.WorkflowEvent):
        pending = self.recorder.pending
        if pending >= self.config.max_pending_events:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{pending} events wait for the trace store "
                f"(max_pending_events={self.config.max_pending_events})",
            )
        with manager_errors(key):
            forecast = self._apply(self.manager, key, event)
        self.wiring.wake_engines()
        eid = EVENT_ID.get()
        record = EventRecord(
            key.tenant,
            key.workflow_id,
            self._wall(),
            event,
            forecast=forecast,
            event_id=eid,
            lease=self._lease(key),
        )
        future = self.recorder.record(record)
        if eid and self.router is not None:
            self.router.accepted(eid, future, forecast, record)
        return future, (Answer(forecast, key.workflow_id) if forecast is not None else None)

    def _lease(self, key: WorkflowKey) -> str:
        """The lease an event of ``key`` is accepted under (cluster mode; "" alone): the log
        refuses it once the partition's lease is another, even a later one of this replica
        (what it was applied to may have been rebuilt away meanwhile)."""
        if self.router is None:
            return ""
        replica = self.router.replica
        return replica.holder(replica.keys.workflow_partition(key.tenant, key.workflow_id)) or ""

    # ------------------------------------------------------------------ unary RPCs
    @rpc("StartWorkflow")
    async def StartWorkflow(self, request: pb.StartWorkflowRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        if (owner := await self._forward("StartWorkflow", request, tenant, context)) is not None:
            return owner
        future, _ = self._start(request, tenant)
        return pb.StartWorkflowResponse(event_seq=await future)

    @rpc("StepStarted")
    async def StepStarted(self, request: pb.StepStartedRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        if (owner := await self._forward("StepStarted", request, tenant, context)) is not None:
            return owner
        future, _ = self._step_started(request, tenant)
        return pb.StepStartedResponse(event_seq=await future)

    @rpc("StepFinished")
    async def StepFinished(self, request: pb.StepFinishedRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        if (owner := await self._forward("StepFinished", request, tenant, context)) is not None:
            return owner
        future, forecast = self._step_finished(request, tenant)
        response = pb.StepFinishedResponse(event_seq=await future)
        if forecast is not None:
            self._to_pb(response.forecast, *forecast)
        return response

    @rpc("EndWorkflow")
    async def EndWorkflow(self, request: pb.EndWorkflowRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        if (owner := await self._forward("EndWorkflow", request, tenant, context)) is not None:
            return owner
        future, _ = self._end(request, tenant)
        return pb.EndWorkflowResponse(event_seq=await future)

    @rpc("GetForecast")
    async def GetForecast(self, request: pb.GetForecastRequest, context):  # noqa: N802
        tenant = call_tenant(request.tenant, context)
        if (owner := await self._forward("GetForecast", request, tenant, context)) is not None:
            return owner
        key = WorkflowKey(tenant, v.check(request, v.GET_FORECAST, self.config)["workflow_id"])
        with manager_errors(key):
            forecast = self.manager.forecast(key.manager_id)
        response = pb.GetForecastResponse()
        if forecast is not None:
            self._to_pb(response.forecast, forecast, key.workflow_id)
        return response

    async def _forward(self, method: str, request, tenant: str, context):
        """The owning replica's answer (cluster mode), or None: this replica owns it."""
        if self.router is None:
            return None
        return await self.router.workflow_call(method, request, tenant, context)

    async def _forward_event(self, kind: str, request, tenant: str, context):
        """A Session event of a workflow owned elsewhere: (event_seq, forecast or None)."""
        out = await self.router.workflow_call(
            _UNARY[kind], request, tenant, context, in_session=True
        )
        if out is None:  # became ours meanwhile
            future, forecast = self._appliers[kind](request, tenant)
            return await future, forecast
        has = kind == "step_finished" and out.HasField("forecast")
        forecast = out.forecast if has else None
        return out.event_seq, forecast

    def _forecast_pb(self, msg: pb.Forecast, forecast: Forecast, workflow_id: str) -> None:
        self._forecasts.fill(msg, forecast)
        msg.workflow_id = workflow_id  # the caller's id, not the tenant-qualified key

    # ------------------------------------------------------------------ restart
    def rebuild(self, records: Iterable[EventRecord], ended: Iterable[tuple[str, str]] = ()) -> int:
        """Replay the trace store's events of unfinished workflows into the manager (at
        start-up, before serving); ``ended`` (tenant, workflow id) pairs, oldest first, are
        remembered so late calls for them still answer FAILED_PRECONDITION. Returns the
        number of running workflows."""
        self.manager.remember_ended(WorkflowKey(t, w).manager_id for t, w in ended)
        for r in records:
            apply_event(self.manager, WorkflowKey(r.tenant, r.workflow_id), r.event)
        return self.manager.active_count()
