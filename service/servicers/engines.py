"""The EngineLink service: one Attach stream per engine, block/request events in, coalesced
CachePlans out. The manager alone knows which engines are attached; this servicer keeps only
which stream currently speaks for each engine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc

from pbkv.cache_manager import errors as cm_errors
from pbkv.cache_manager.events import RequestStarted
from pbkv.service import validation as v
from pbkv.service.convert import ConversionError, event_from_pb, plan_to_pb
from pbkv.service.servicers.wiring import Wiring, manager_errors, manager_key
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class EngineLinkServicer(pb_grpc.EngineLinkServicer):
    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.manager = wiring.manager
        self.config = wiring.config
        self._streams: dict[str, int] = {}  # engine id -> the Attach stream serving it
        self._stream_ids = 0
        self.counters: dict[str, int] = {"engine_events": 0, "engine_event_errors": 0,
                                         "plans_sent": 0, "engine_events_dropped": 0}

    @property
    def attached_streams(self) -> int:
        return len(self._streams)

    async def Attach(self, request_iterator, context):  # noqa: N802
        t0 = time.perf_counter()
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        engine_id = first.hello.engine_id
        try:
            v.check(first.hello, v.HELLO, self.config)
            self._attach_engine(engine_id, first.hello)
        except RpcFailure as exc:
            self.wiring.observe("Attach", exc.code.name, time.perf_counter() - t0)
            await context.abort(exc.code, exc.message)
        self._stream_ids += 1
        stream_id = self._streams[engine_id] = self._stream_ids
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
            while self._streams.get(engine_id) == stream_id:
                waiter = asyncio.create_task(dirty.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if dirty.is_set():
                    dirty.clear()
                    with manager_errors():
                        plan = self.manager.plan(engine_id)
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
            if self._streams.get(engine_id) == stream_id:
                del self._streams[engine_id]
            self.wiring.observe("Attach", code, time.perf_counter() - t0)

    def _attach_engine(self, engine_id: str, hello: pb.AttachRequest) -> None:
        """Every Attach starts the engine's block directory afresh: an engine re-announces
        what it caches after (re)attaching (the vLLM connector does), so events lost while
        it was away can never leave the directory wrong."""
        with manager_errors():
            if self.manager.has_engine(engine_id):
                self.manager.detach_engine(engine_id)
            self.manager.attach_engine(engine_id, gpu_blocks=hello.gpu_blocks,
                                       cpu_blocks=hello.cpu_blocks,
                                       tokens_per_block=hello.tokens_per_block)

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
