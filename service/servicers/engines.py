"""The EngineLink service: one Attach stream per engine, block/request events in, coalesced
CachePlans out. The manager alone knows which engines are attached; this servicer keeps only
which stream currently speaks for each engine (and when a silent one is released)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import grpc

from pbkv.cache_manager import errors as cm_errors
from pbkv.cache_manager.events import RequestStarted
from pbkv.service import validation as v
from pbkv.service.auth import MalformedRequest
from pbkv.service.convert import ConversionError, event_from_pb, plan_to_pb
from pbkv.service.servicers.wiring import Wiring, manager_errors, manager_key
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


YIELD_EVERY = 256  # engine events applied between two yields to the event loop


@dataclass(eq=False)
class _Attachment:
    """The Attach stream that speaks for an engine (one at a time: a newer Attach with the
    same engine id takes over and this one is ended with ABORTED)."""

    engine_id: str
    gpu_blocks: int
    taken_over: asyncio.Event = field(default_factory=asyncio.Event)
    moved: bool = False  # cluster: the engine's partition left this replica (not a takeover)


class EngineLinkServicer(pb_grpc.EngineLinkServicer):
    """Engine identity: an engine id names one block directory, fed by one stream. A second
    Attach with an id that is attached takes over: the first stream ends with ABORTED (``engine
    id X was taken over by a newer attach``), none of its later messages is applied, and the
    directory starts afresh for the new stream. An engine whose stream ends is released
    (detached from the manager, its directory freed) ``engine_grace_s`` later unless it
    re-attaches before."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.manager = wiring.manager
        self.config = wiring.config
        self._streams: dict[str, _Attachment] = {}  # engine id -> the stream serving it
        self._releases: dict[str, asyncio.TimerHandle] = {}  # engine id -> pending release
        # engine id -> monotonic time its stream last carried a plan (or it attached); kept
        # until the engine is released, so a dead link shows as an ageing plan
        self._plan_sent_s: dict[str, float] = {}
        self.router = None  # cluster mode: a cluster.forward.Forwarder (engines owned elsewhere)
        self.counters: dict[str, int] = {
            "engine_events": 0,
            "engine_event_errors": 0,
            "plans_sent": 0,
            "engine_events_dropped": 0,
            "engine_takeovers": 0,
            "engines_released": 0,
        }

    @property
    def attached_streams(self) -> int:
        return len(self._streams)

    def plan_ages_s(self) -> dict[str, float]:
        """Per engine the service knows: seconds since its last plan went out (since it
        attached, before the first). An engine drops a plan older than its
        ``max_plan_age_s`` (30 s by default) and runs plain LRU."""
        now = time.monotonic()
        return {e: round(now - t, 3) for e, t in sorted(self._plan_sent_s.items())}

    async def Attach(self, request_iterator, context):  # noqa: N802
        t0 = time.perf_counter()
        try:
            first = await anext(aiter(request_iterator))
            engine_id = first.hello.engine_id
            v.check(first.hello, v.HELLO, self.config)
            owner = None
            if self.router is not None:
                owner = await self.router.engine_owner(engine_id, context)
            if owner is None:
                me = self._take(engine_id, first.hello)
        except StopAsyncIteration:
            return
        except RpcFailure as exc:
            self.wiring.observe("Attach", exc.code.name, time.perf_counter() - t0)
            await context.abort(exc.code, exc.message)
        if owner is not None:  # another replica owns this engine: relay the stream there
            try:
                async for plan in self.router.proxy_attach(owner, first, request_iterator, context):
                    yield plan
            except RpcFailure as exc:
                await context.abort(exc.code, exc.message)
            return
        dirty = asyncio.Event()
        dirty.set()  # the first plan answers the hello at once
        self.wiring.add_engine_waker(dirty)  # orchestrator events wake the stream too
        sync = [first.sync]  # highest barrier token applied (see EngineMessage.sync)
        reader = asyncio.create_task(self._read_engine(me, first, request_iterator, dirty, sync))
        taken = asyncio.create_task(me.taken_over.wait())
        last_seq: int | None = None
        last_sync = 0
        loop = asyncio.get_running_loop()
        last_plan_t = -math.inf
        refresh_s = self.config.plan_refresh_s
        last_sent_t = loop.time()
        code = "OK"
        waiter: asyncio.Task | None = None
        try:
            while True:
                waiter = asyncio.create_task(dirty.wait())
                await asyncio.wait(
                    {waiter, reader, taken},
                    timeout=max(0.0, last_sent_t + refresh_s - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                if me.taken_over.is_set() and me.moved:
                    code = "UNAVAILABLE"
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"engine id {engine_id!r} moved to another replica; attach again",
                    )
                if me.taken_over.is_set():
                    code = "ABORTED"
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"engine id {engine_id!r} was taken over by a newer attach",
                    )
                # An unchanged plan is repeated (a few bytes) every plan_refresh_s, so an engine
                # whose plan has not changed does not take it for stale and fall back to LRU.
                due = last_seq is not None and loop.time() - last_sent_t >= refresh_s
                if dirty.is_set() or due:
                    # Wakes (engine messages, orchestrator events) coalesce: at most one plan
                    # per plan_min_interval_s, however many events woke the stream.
                    wait_s = last_plan_t + self.config.plan_min_interval_s - loop.time()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                    dirty.clear()
                    last_plan_t = loop.time()
                    if self.router is not None and sync[0] > last_sync:
                        # A barrier: the plan must also see every workflow event other
                        # replicas had acknowledged before it (their partitions' logs).
                        await self.router.replica.follower.catch_up_all()
                    with manager_errors():
                        plan = self.manager.plan(engine_id)
                    if plan.seq != last_seq:
                        msg = plan_to_pb(plan)
                        self.counters["plans_sent"] += 1
                    elif sync[0] > last_sync or due:  # same plan: a small repeat (barrier)
                        msg = pb.CachePlan(engine_id=engine_id, seq=plan.seq)
                    else:
                        continue
                    last_seq, last_sync = plan.seq, sync[0]
                    msg.sync = last_sync
                    yield msg  # awaits flow control: at most one plan in flight
                    last_sent_t = loop.time()
                    self._plan_sent_s[engine_id] = time.monotonic()
                elif reader.done():
                    break
            if reader.exception() is not None:
                exc = reader.exception()
                if isinstance(exc, RpcFailure):
                    code = exc.code.name
                    if not isinstance(exc, MalformedRequest):  # the gate logged that one
                        log.warning("engine %s: stream ended: %s %s", engine_id, code, exc.message)
                    await context.abort(exc.code, exc.message)
                raise exc
        finally:
            for task in (reader, taken, waiter):
                if task is not None:
                    task.cancel()
            self.wiring.remove_engine_waker(dirty)
            self._let_go(me)
            self.wiring.observe("Attach", code, time.perf_counter() - t0)

    # ------------------------------------------------------------------ engine lifecycle
    def _take(self, engine_id: str, hello: pb.AttachRequest) -> _Attachment:
        """Make a new stream the one speaking for ``engine_id``. Every Attach starts the
        engine's block directory afresh: an engine re-announces what it caches after
        (re)attaching (the vLLM connector does), so events lost while it was away can never
        leave the directory wrong."""
        previous = self._streams.pop(engine_id, None)
        if previous is not None:
            previous.taken_over.set()
            self.counters["engine_takeovers"] += 1
            log.warning(
                "engine %s: taken over by a newer attach; the older stream is ended", engine_id
            )
        release = self._releases.pop(engine_id, None)
        if release is not None:
            release.cancel()
        with manager_errors():
            if self.manager.has_engine(engine_id):
                self.manager.detach_engine(engine_id)
            self.manager.attach_engine(
                engine_id,
                gpu_blocks=hello.gpu_blocks,
                cpu_blocks=hello.cpu_blocks,
                tokens_per_block=hello.tokens_per_block,
            )
        me = self._streams[engine_id] = _Attachment(engine_id, hello.gpu_blocks)
        self._plan_sent_s[engine_id] = time.monotonic()
        return me

    def drop_engines(self, partition_of, partitions: set[int]) -> None:
        """Cluster: the engine partitions ``partitions`` left this replica; end their streams
        (UNAVAILABLE: the engine attaches again and reaches the new owner) and detach them."""
        for engine_id in [e for e in self._streams if partition_of(e) in partitions]:
            me = self._streams.pop(engine_id)
            me.moved = True
            me.taken_over.set()
            if self.manager.has_engine(engine_id):
                self.manager.detach_engine(engine_id)

    def _speaks(self, me: _Attachment) -> bool:
        return self._streams.get(me.engine_id) is me

    def _let_go(self, me: _Attachment) -> None:
        """The stream ended: unless another took over, release the engine after the grace."""
        if not self._speaks(me):
            return
        del self._streams[me.engine_id]
        loop = asyncio.get_running_loop()
        self._releases[me.engine_id] = loop.call_later(
            self.config.engine_grace_s, self._release, me.engine_id
        )

    def _release(self, engine_id: str) -> None:
        self._releases.pop(engine_id, None)
        if engine_id not in self._streams:
            self._plan_sent_s.pop(engine_id, None)
        if engine_id not in self._streams and self.manager.has_engine(engine_id):
            self.manager.detach_engine(engine_id)
            self.counters["engines_released"] += 1

    # ------------------------------------------------------------------ events
    async def _read_engine(
        self,
        me: _Attachment,
        first: pb.EngineMessage,
        request_iterator,
        dirty: asyncio.Event,
        sync: list[int],
    ) -> None:
        await self._apply_engine_message(me, first)
        async for msg in request_iterator:
            if not self._speaks(me):
                return  # taken over: nothing more of this stream is applied
            if msg.HasField("hello"):
                raise v.invalid("hello is only allowed in the first message")
            await self._apply_engine_message(me, msg)
            sync[0] = max(sync[0], msg.sync)
            dirty.set()

    async def _apply_engine_message(self, me: _Attachment, msg: pb.EngineMessage) -> None:
        if len(msg.events) > self.config.max_events_per_message:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"events has {len(msg.events)} entries; the limit is "
                f"{self.config.max_events_per_message} (max_events_per_message)",
            )
        self.counters["engine_events_dropped"] = max(
            self.counters["engine_events_dropped"], msg.events_dropped
        )
        for i, raw in enumerate(msg.events):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)  # let health checks and other streams in
                if not self._speaks(me):
                    return
            try:
                event = self._engine_event(me, raw, i)
                if self.router is not None:  # cluster: the request's workflow may lag here
                    await self.router.replica.follower.before_request(event)
                self.manager.on_engine_event(event)
                self.counters["engine_events"] += 1
            except (ConversionError, RpcFailure, cm_errors.CacheManagerError) as exc:
                # Fail open: one bad event must not cut the engine off from its plans.
                self.counters["engine_event_errors"] += 1
                if self.counters["engine_event_errors"] <= 10:
                    log.warning(
                        "engine %s: event dropped: %s", me.engine_id, getattr(exc, "message", exc)
                    )

    def _engine_event(self, me: _Attachment, raw: pb.EngineEvent, i: int):
        kind = raw.WhichOneof("kind")
        if kind is not None:
            try:
                v.check(getattr(raw, kind), v.ENGINE_EVENTS[kind], self.config)
            except RpcFailure as exc:
                raise v.invalid(f"events[{i}].{kind}.{exc.message}") from None
        event = event_from_pb(raw, me.engine_id, i)
        if isinstance(event, RequestStarted):
            if len(event.block_hashes) > me.gpu_blocks:
                raise v.invalid(
                    f"events[{i}].request_started.block_hashes has "
                    f"{len(event.block_hashes)} blocks; the engine has "
                    f"{me.gpu_blocks} gpu_blocks"
                )
            if event.workflow_id is not None:
                tenant = v.tenant(event.tenant or "", None)
                event = dataclasses.replace(
                    event, workflow_id=manager_key(tenant, event.workflow_id), tenant=tenant
                )
        return event
