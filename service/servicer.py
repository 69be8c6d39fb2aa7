"""gRPC servicer: thin over the CacheManager. Protobuf stops here.

Each orchestrator RPC: check fields -> apply to the manager -> hand the event to the recorder
(no ``await`` between the two, so the trace store sees events in the manager's order) ->
await the store's commit -> answer. Nothing is acknowledged before it is durable.

Tenants: the manager knows a workflow as ``"<tenant>/<workflow_id>"`` (tenant names cannot
contain ``/``), so two tenants may use the same workflow id and one tenant's calls can never
reach another's workflow -- it is simply NOT_FOUND for them. Engines tag requests with
(tenant, workflow_id) and the same mapping applies on the Attach stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pbkv.cache_manager import errors as cm_errors
from pbkv.cache_manager.events import RequestStarted
from pbkv.predictor.forecast import ObservedStep
from pbkv.service import validation as v
from pbkv.service.config import ServiceConfig
from pbkv.service.convert import ConversionError, event_from_pb, forecast_to_pb, plan_to_pb
from pbkv.service.recorder import Recorder, RecorderFull
from pbkv.service.stores.base import EventRecord, StoreError
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# CacheManager errors -> gRPC codes (the manager's message already names the field).
_MANAGER_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (cm_errors.UnknownWorkflow, grpc.StatusCode.NOT_FOUND),
    (cm_errors.UnknownEngine, grpc.StatusCode.NOT_FOUND),
    (cm_errors.DuplicateWorkflow, grpc.StatusCode.ALREADY_EXISTS),
    (cm_errors.WorkflowEnded, grpc.StatusCode.FAILED_PRECONDITION),
    (cm_errors.OutOfOrderStep, grpc.StatusCode.FAILED_PRECONDITION),
    (cm_errors.CacheManagerError, grpc.StatusCode.INVALID_ARGUMENT),
)


def manager_key(tenant: str, workflow_id: str) -> str:
    return f"{tenant}/{workflow_id}"


@dataclass(slots=True)
class _Flow:
    """What the servicer itself tracks per running workflow (ownership, step count)."""

    tenant: str
    workflow_id: str
    app: str
    task: str
    started_s: float
    num_steps: int = 0
    last_agent: str = ""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path | None
    version: str
    mtime_ns: int | None


RpcObserver = Callable[[str, str, float], None]
SESSION_WINDOW = 256  # Session requests (event batches) awaiting their commit per stream


def _rpc(method: str):
    """Wrap a unary handler: map failures to statuses, report (method, code, latency)."""

    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(self: PbkvServicer, request, context: grpc.aio.ServicerContext):
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await fn(self, request, context)
            except RpcFailure as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except RecorderFull as exc:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(code, str(exc))
            except StoreError as exc:
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, f"trace store: {exc}")
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method)
                raise
            finally:
                self.observe_rpc(method, code.name, time.perf_counter() - t0)

        return wrapper

    return deco


class PbkvServicer(pb_grpc.OrchestratorServicer, pb_grpc.EngineLinkServicer,
                   pb_grpc.OperatorServicer):
    def __init__(self, manager, recorder: Recorder, config: ServiceConfig, *,
                 model: ModelInfo | None = None, observe_rpc: RpcObserver | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.manager = manager
        self.recorder = recorder
        self.config = config
        self.model = model or ModelInfo(None, "", None)
        self._observe = observe_rpc
        # Merged into stats_dict() (e.g. the demo's "baseline_lru" twin for the dashboard).
        self.extra_stats: dict[str, Any] = {}
        self._wall = wall_clock
        self._flows: dict[str, _Flow] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._engines: dict[str, tuple[int, int, int]] = {}
        self._engine_streams: dict[str, int] = {}
        self._stream_ids = 0
        self._reload_lock = asyncio.Lock()
        self._session_appliers = {
            "start": self._apply_start, "step_started": self._apply_step_started,
            "step_finished": self._apply_step_finished, "end": self._apply_end}
        self.counters: dict[str, int] = {"engine_events": 0, "engine_event_errors": 0,
                                         "plans_sent": 0, "engine_events_dropped": 0,
                                         "model_reloads": 0}

    # ------------------------------------------------------------------ helpers
    def observe_rpc(self, method: str, code: str, latency_s: float) -> None:
        if self._observe is not None:
            self._observe(method, code, latency_s)

    def _tenant(self, request_tenant: str, context: grpc.aio.ServicerContext) -> str:
        metadata = {k: val for k, val in (context.invocation_metadata() or ())}
        return v.tenant(request_tenant, metadata.get("x-pbkv-tenant"))

    def _workflow_id(self, value: str) -> str:
        return v.name(value, "workflow_id", self.config.max_name_bytes)

    def _flow(self, tenant: str, workflow_id: str) -> tuple[str, _Flow]:
        key = manager_key(tenant, workflow_id)
        flow = self._flows.get(key)
        if flow is not None:
            return key, flow
        if key in self._ended:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"workflow_id {workflow_id!r} has ended")
        raise RpcFailure(grpc.StatusCode.NOT_FOUND,
                         f"workflow_id {workflow_id!r} is not a running workflow of tenant "
                         f"{tenant!r}")

    def _call_manager(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except cm_errors.CacheManagerError as exc:
            message = str(exc)
            if args and isinstance(args[0], str) and "/" in args[0]:
                # Show the caller its own workflow id, not the tenant-qualified key.
                message = message.replace(args[0], args[0].split("/", 1)[1])
            for cls, code in _MANAGER_CODES:
                if isinstance(exc, cls):
                    raise RpcFailure(code, message) from exc
            raise  # pragma: no cover - CacheManagerError is the last row

    def _record(self, kind: str, tenant: str, workflow_id: str,
                payload: dict[str, Any]) -> asyncio.Future[int]:
        return self.recorder.record(EventRecord(kind, tenant, workflow_id, self._wall(), payload))

    def _check_capacity(self) -> None:
        pending = self.recorder.pending
        if pending >= self.config.max_pending_events:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{pending} events wait for the trace store "
                             f"(max_pending_events={self.config.max_pending_events})")

    def _forget(self, key: str) -> None:
        self._flows.pop(key, None)
        self._ended[key] = None
        while len(self._ended) > self.config.recent_ended:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------------ orchestrator
    # Each ``_apply_*`` validates, updates the manager and queues the event for the store,
    # without awaiting: the unary RPCs and the Session stream share them, and the store sees
    # events in the manager's order. They return (commit future, forecast or None).
    def _apply_start(self, request: pb.StartWorkflowRequest, tenant: str):
        wid = self._workflow_id(request.workflow_id)
        app = v.name(request.app, "app", self.config.max_name_bytes)
        task = v.text(request.task, "task", self.config.max_context_bytes)
        now_s = v.finite(request.now_s if request.HasField("now_s") else None, "now_s")
        key = manager_key(tenant, wid)
        if key in self._flows:
            raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                             f"workflow_id {wid!r} is already running")
        if key in self._ended:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"workflow_id {wid!r} has ended; workflow ids are not reused")
        if len(self._flows) >= self.config.max_active_workflows:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"{len(self._flows)} workflows are running "
                             f"(max_active_workflows)")
        self._check_capacity()
        self._call_manager(self.manager.start_workflow, key, app, tenant=tenant, task=task,
                           now_s=now_s)
        self._flows[key] = _Flow(tenant, wid, app, task, now_s if now_s is not None
                                 else self._wall())
        return self._record("start", tenant, wid, {"app": app, "task": task,
                                                  "now_s": now_s}), None

    def _apply_step_started(self, request: pb.StepStartedRequest, tenant: str):
        wid = self._workflow_id(request.workflow_id)
        agent = v.name(request.agent, "agent", self.config.max_name_bytes)
        group = (v.name(request.parallel_group, "parallel_group", self.config.max_name_bytes)
                 if request.HasField("parallel_group") else None)
        now_s = v.finite(request.now_s if request.HasField("now_s") else None, "now_s")
        key, _ = self._flow(tenant, wid)
        self._check_capacity()
        self._call_manager(self.manager.step_started, key, agent, parallel_group=group,
                           now_s=now_s)
        return self._record("step_started", tenant, wid, {
            "agent": agent, "parallel_group": group, "now_s": now_s}), None

    def _apply_step_finished(self, request: pb.StepFinishedRequest, tenant: str):
        cfg = self.config
        wid = self._workflow_id(request.workflow_id)
        agent = v.name(request.agent, "agent", cfg.max_name_bytes)
        opt = {f: getattr(request, f) if request.HasField(f) else None
               for f in ("parallel_group", "step_index", "start_s", "end_s", "phase")}
        if opt["parallel_group"] is not None:
            v.name(opt["parallel_group"], "parallel_group", cfg.max_name_bytes)
        if opt["phase"] is not None:
            v.name(opt["phase"], "phase", cfg.max_name_bytes)
        v.text(request.context_text, "context_text", cfg.max_context_bytes)
        v.text(request.output_text, "output_text", cfg.max_context_bytes)
        v.finite(opt["start_s"], "start_s")
        v.finite(opt["end_s"], "end_s")
        if (opt["start_s"] is not None and opt["end_s"] is not None
                and opt["end_s"] < opt["start_s"]):
            raise v.invalid(f"end_s ({opt['end_s']}) is before start_s ({opt['start_s']})")
        prompt = []
        for i, seg in enumerate(request.prompt):
            v.name(seg.id, f"prompt[{i}].id", cfg.max_name_bytes)
            prompt.append({"id": seg.id, "tokens": seg.tokens})
        key, flow = self._flow(tenant, wid)
        if opt["step_index"] is not None and opt["step_index"] != flow.num_steps:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"step_index {opt['step_index']} is out of order: workflow "
                             f"{wid!r} has finished {flow.num_steps} steps, so the next "
                             f"step_index is {flow.num_steps}")
        self._check_capacity()
        step = ObservedStep(agent, opt["parallel_group"], request.output_text or None,
                            request.output_tokens, opt["start_s"], opt["end_s"], opt["phase"])
        forecast = self._call_manager(self.manager.step_finished, key, step)
        flow.num_steps += 1
        flow.last_agent = agent
        future = self._record("step_finished", tenant, wid, {
            "agent": agent, "parallel_group": opt["parallel_group"],
            "step_index": flow.num_steps - 1, "context_text": request.context_text,
            "output_text": request.output_text, "input_tokens": request.input_tokens,
            "output_tokens": request.output_tokens, "start_s": opt["start_s"],
            "end_s": opt["end_s"], "phase": opt["phase"], "prompt": prompt})
        return future, (self._forecast_pb(forecast, wid) if forecast is not None else None)

    def _apply_end(self, request: pb.EndWorkflowRequest, tenant: str):
        wid = self._workflow_id(request.workflow_id)
        now_s = v.finite(request.now_s if request.HasField("now_s") else None, "now_s")
        key, _ = self._flow(tenant, wid)
        self._check_capacity()
        self._call_manager(self.manager.end_workflow, key, now_s=now_s)
        self._forget(key)
        return self._record("end", tenant, wid, {"now_s": now_s}), None

    @_rpc("StartWorkflow")
    async def StartWorkflow(self, request: pb.StartWorkflowRequest, context):  # noqa: N802
        future, _ = self._apply_start(request, self._tenant(request.tenant, context))
        return pb.StartWorkflowResponse(event_seq=await future)

    @_rpc("StepStarted")
    async def StepStarted(self, request: pb.StepStartedRequest, context):  # noqa: N802
        future, _ = self._apply_step_started(request, self._tenant(request.tenant, context))
        return pb.StepStartedResponse(event_seq=await future)

    @_rpc("StepFinished")
    async def StepFinished(self, request: pb.StepFinishedRequest, context):  # noqa: N802
        future, forecast = self._apply_step_finished(request,
                                                     self._tenant(request.tenant, context))
        response = pb.StepFinishedResponse(event_seq=await future)
        if forecast is not None:
            response.forecast.CopyFrom(forecast)
        return response

    @_rpc("EndWorkflow")
    async def EndWorkflow(self, request: pb.EndWorkflowRequest, context):  # noqa: N802
        future, _ = self._apply_end(request, self._tenant(request.tenant, context))
        return pb.EndWorkflowResponse(event_seq=await future)

    async def Session(self, request_iterator, context):  # noqa: N802
        """Orchestrator events on one stream, answered in order (see the .proto). A bad event
        gets an error result; the stream goes on. At most ``SESSION_WINDOW`` requests wait
        for their commit; beyond that the server stops reading (flow control pushes back)."""
        metadata = {k: val for k, val in (context.invocation_metadata() or ())}
        md_tenant = metadata.get("x-pbkv-tenant")
        pending: asyncio.Queue = asyncio.Queue(SESSION_WINDOW)

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    await pending.put([self._apply_session_event(e, md_tenant)
                                       for e in req.events])
            finally:
                await pending.put(None)

        task = asyncio.create_task(reader())
        try:
            while (batch := await pending.get()) is not None:
                reply = pb.SessionReply()
                for rid, kind, t0, future, forecast, failure in batch:
                    result = reply.results.add(id=rid)
                    if failure is None:
                        try:
                            result.event_seq = await future
                        except StoreError as exc:
                            failure = RpcFailure(grpc.StatusCode.UNAVAILABLE,
                                                 f"trace store: {exc}")
                    if failure is not None:
                        result.code, result.message = failure.code.value[0], failure.message
                    elif forecast is not None:
                        result.forecast.CopyFrom(forecast)
                    self.observe_rpc(f"Session.{kind}", failure.code.name if failure else "OK",
                                     time.perf_counter() - t0)
                yield reply
        finally:
            task.cancel()

    def _apply_session_event(self, event: pb.SessionEvent, md_tenant: str | None):
        t0 = time.perf_counter()
        kind = event.WhichOneof("event")
        try:
            if kind is None:
                raise v.invalid(f"event {event.id}: no event set")
            request = getattr(event, kind)
            apply = self._session_appliers[kind]
            future, forecast = apply(request, v.tenant(request.tenant, md_tenant))
            return event.id, kind, t0, future, forecast, None
        except RecorderFull as exc:
            return (event.id, kind, t0, None, None,
                    RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
        except RpcFailure as exc:
            return event.id, kind, t0, None, None, exc

    @_rpc("GetForecast")
    async def GetForecast(self, request: pb.GetForecastRequest, context):  # noqa: N802
        tenant = self._tenant(request.tenant, context)
        wid = self._workflow_id(request.workflow_id)
        key, _ = self._flow(tenant, wid)
        forecast = self._call_manager(self.manager.forecast, key)
        response = pb.GetForecastResponse()
        if forecast is not None:
            response.forecast.CopyFrom(self._forecast_pb(forecast, wid))
        return response

    @staticmethod
    def _forecast_pb(forecast, workflow_id: str) -> pb.Forecast:
        msg = forecast_to_pb(forecast)
        msg.workflow_id = workflow_id  # the caller's id, not the tenant-qualified key
        return msg

    # ------------------------------------------------------------------ engine link
    async def Attach(self, request_iterator, context):  # noqa: N802
        t0 = time.perf_counter()
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        hello = first.hello
        engine_id = hello.engine_id
        try:
            v.name(engine_id, "hello.engine_id", self.config.max_name_bytes)
            if hello.tokens_per_block <= 0:
                raise v.invalid("hello.tokens_per_block must be > 0")
            self._attach_engine(engine_id, hello)
        except RpcFailure as exc:
            self.observe_rpc("Attach", exc.code.name, time.perf_counter() - t0)
            await context.abort(exc.code, exc.message)
        self._stream_ids += 1
        stream_id = self._engine_streams[engine_id] = self._stream_ids
        dirty = asyncio.Event()
        dirty.set()  # the first plan answers the hello at once
        sync = [first.sync]  # highest barrier token applied (see EngineMessage.sync)
        reader = asyncio.create_task(
            self._read_engine(engine_id, first, request_iterator, dirty, sync))
        last_seq: int | None = None
        last_sync = 0
        code = "OK"
        waiter: asyncio.Task | None = None
        try:
            while self._engine_streams.get(engine_id) == stream_id:
                waiter = asyncio.create_task(dirty.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if dirty.is_set():
                    dirty.clear()
                    plan = self._call_manager(self.manager.plan, engine_id)
                    if plan.seq != last_seq:
                        msg = plan_to_pb(plan)
                        self.counters["plans_sent"] += 1
                    elif sync[0] > last_sync:  # same plan: a small repeat carries the barrier
                        msg = pb.CachePlan(engine_id=engine_id, seq=plan.seq)
                    else:
                        continue
                    last_seq, last_sync = plan.seq, sync[0]
                    msg.sync = last_sync
                    yield msg  # awaits flow control: at most one plan in flight
                elif reader.done():
                    break
            if reader.done() and reader.exception() is not None:
                exc = reader.exception()
                if isinstance(exc, RpcFailure):
                    code = exc.code.name
                    await context.abort(exc.code, exc.message)
                raise exc
        finally:
            reader.cancel()
            if waiter is not None:
                waiter.cancel()
            if self._engine_streams.get(engine_id) == stream_id:
                del self._engine_streams[engine_id]
            self.observe_rpc("Attach", code, time.perf_counter() - t0)

    def _attach_engine(self, engine_id: str, hello: pb.AttachRequest) -> None:
        """Every Attach starts the engine's block directory afresh: an engine re-announces
        what it caches after (re)attaching (the vLLM connector does), so events lost while
        it was away can never leave the directory wrong."""
        geometry = (hello.gpu_blocks, hello.cpu_blocks, hello.tokens_per_block)
        if engine_id in self._engines:
            self._call_manager(self.manager.detach_engine, engine_id)
            del self._engines[engine_id]
        self._call_manager(self.manager.attach_engine, engine_id, gpu_blocks=hello.gpu_blocks,
                           cpu_blocks=hello.cpu_blocks, tokens_per_block=hello.tokens_per_block)
        self._engines[engine_id] = geometry

    async def _read_engine(self, engine_id: str, first: pb.EngineMessage, request_iterator,
                           dirty: asyncio.Event, sync: list[int]) -> None:
        self._apply_engine_message(engine_id, first)
        async for msg in request_iterator:
            if msg.HasField("hello"):
                raise v.invalid("hello is only allowed in the first message")
            self._apply_engine_message(engine_id, msg)
            sync[0] = max(sync[0], msg.sync)
            dirty.set()

    def _apply_engine_message(self, engine_id: str, msg: pb.EngineMessage) -> None:
        if len(msg.events) > self.config.max_events_per_message:
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"events has {len(msg.events)} entries; the limit is "
                             f"{self.config.max_events_per_message} (max_events_per_message)")
        self.counters["engine_events_dropped"] = max(self.counters["engine_events_dropped"],
                                                     msg.events_dropped)
        for i, raw in enumerate(msg.events):
            try:
                event = event_from_pb(raw, engine_id, i)
                if isinstance(event, RequestStarted) and event.workflow_id is not None:
                    tenant = v.tenant(event.tenant or "", None)
                    event = dataclasses.replace(
                        event, workflow_id=manager_key(tenant, event.workflow_id),
                        tenant=tenant)
                self.manager.on_engine_event(event)
                self.counters["engine_events"] += 1
            except (ConversionError, RpcFailure, cm_errors.CacheManagerError) as exc:
                # Fail open: one bad event must not cut the engine off from its plans.
                self.counters["engine_event_errors"] += 1
                if self.counters["engine_event_errors"] <= 10:
                    log.warning("engine %s: event dropped: %s", engine_id, exc)

    # ------------------------------------------------------------------ operator
    def stats_dict(self) -> dict[str, Any]:
        stats = self.manager.stats()
        out = dict(stats.to_dict()) if hasattr(stats, "to_dict") else {}
        out.update(self.extra_stats)
        rec = self.recorder.stats()
        out["service"] = {
            "active_workflows": len(self._flows),
            "engines": sorted(self._engines),
            "attached_streams": len(self._engine_streams),
            "store": self.recorder.store.describe(),
            "events_recorded": rec.recorded, "store_commits": rec.commits,
            "store_pending": rec.pending, "store_failed": rec.failed,
            "model_path": str(self.model.path) if self.model.path else None,
            "model_version": self.model.version,
            **self.counters,
        }
        return out

    @_rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, context):  # noqa: N802
        return pb.GetStatsResponse(stats_json=json.dumps(self.stats_dict(), default=str))

    @_rpc("ListWorkflows")
    async def ListWorkflows(self, request: pb.ListWorkflowsRequest, context):  # noqa: N802
        tenant = self._tenant(request.tenant, context)
        limit = request.limit or 1_000
        out = []
        for flow in self._flows.values():
            if flow.tenant != tenant:
                continue
            out.append(pb.WorkflowSummary(
                workflow_id=flow.workflow_id, app=flow.app, tenant=flow.tenant, task=flow.task,
                num_steps=flow.num_steps, last_agent=flow.last_agent, started_s=flow.started_s))
            if len(out) >= limit:
                break
        return pb.ListWorkflowsResponse(workflows=out)

    @_rpc("ReloadModel")
    async def ReloadModel(self, request: pb.ReloadModelRequest, context):  # noqa: N802
        raw = request.model_path or (str(self.model.path) if self.model.path else "")
        if not raw:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             "model_path is empty and the service has no configured model")
        await self.reload_model(Path(raw))
        return pb.ReloadModelResponse(model_version=self.model.version)

    async def reload_model(self, path: Path) -> ModelInfo:
        """Load an artifact off the loop thread and swap it in; the streams stay up."""
        from pbkv.predictor.artifact import ArtifactError

        async with self._reload_lock:
            try:
                predictor, info = await asyncio.to_thread(load_model_info, path)
            except ArtifactError as exc:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"model_path: {exc}") from exc
            self.manager.set_predictor(predictor)
            self.model = info
            self.counters["model_reloads"] += 1
            log.info("model %s loaded from %s", info.version, path)
            return info

    # ------------------------------------------------------------------ restart
    def rebuild(self, events, ended: list[tuple[str, str]] = ()) -> int:
        """Replay the trace store's events of unfinished workflows into the manager (at
        start-up, before serving); ``ended`` (tenant, workflow id) pairs, oldest first, are
        remembered so late calls for them still answer FAILED_PRECONDITION. Returns the
        number of workflows rebuilt."""
        for tenant, workflow_id in ended:
            self._forget(manager_key(tenant, workflow_id))
        for e in events:
            key = manager_key(e.tenant, e.workflow_id)
            p = e.payload
            if e.kind == "start":
                self.manager.start_workflow(key, p["app"], tenant=e.tenant, task=p["task"],
                                            now_s=p.get("now_s"))
                started = p.get("now_s") if p.get("now_s") is not None else e.at_s
                self._flows[key] = _Flow(e.tenant, e.workflow_id, p["app"], p["task"],
                                         started)
            elif e.kind == "step_started":
                self.manager.step_started(key, p["agent"], parallel_group=p["parallel_group"],
                                          now_s=p.get("now_s"))
            elif e.kind == "step_finished":
                self.manager.step_finished(key, ObservedStep(
                    p["agent"], p["parallel_group"], p["output_text"] or None,
                    p["output_tokens"], p["start_s"], p["end_s"], p["phase"]))
                flow = self._flows[key]
                flow.num_steps += 1
                flow.last_agent = p["agent"]
        return len(self._flows)


def load_model_info(path: Path):
    from pbkv.predictor.artifact import load_model, read_metadata

    meta = read_metadata(path)
    predictor = load_model(path)
    version = str(meta.get("version") or f"{meta.get('kind', 'model')}@"
                  f"{int(meta.get('created_unix_s', 0))}")
    mtime = (path / "metadata.json").stat().st_mtime_ns
    return predictor, ModelInfo(path, version, mtime)
