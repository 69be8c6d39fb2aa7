"""Routing in a cluster: a replica forwards what it does not own to the owner.

Clients may connect to any replica (``PbkvClient`` and ``EngineLinkClient`` take several
targets and move on when one fails). An orchestrator call for a workflow partition another
replica owns is sent on, as the same unary RPC, to that owner; an engine's Attach stream for
an engine partition owned elsewhere is proxied there message by message. A forwarded call
carries ``x-pbkv-forwarded``; a replica that receives one for a partition it does not own
(ownership moved meanwhile) answers UNAVAILABLE rather than forwarding again, and the client
retries. While a partition has no owner (its lease expired, not yet taken) calls wait for one
up to ``2 * lease_s``. Forwarded calls of one workflow go out one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from pbkv.service.client import EVENT_ID_HEADER
from pbkv.service.cluster.keys import ENGINE, WORKFLOW
from pbkv.service.cluster.replica import Replica
from pbkv.service.convert import forecast_to_pb
from pbkv.service.recorder import Recorder
from pbkv.service.records import EventRecord
from pbkv.service.servicers.wiring import EVENT_ID
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

FORWARDED = "x-pbkv-forwarded"
MAX_EVENT_ID = 128
_PASSED = ("authorization", "x-pbkv-tenant")  # caller metadata the owner checks again
POLL_S = 0.1


class Forwarder:
    def __init__(self, replica: Replica, recorder: Recorder, timeout_s: float = 30.0) -> None:
        self.replica, self.recorder = replica, recorder
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tails: dict[tuple[str, str], asyncio.Future] = {}
        self.counters = {
            "forwarded_calls": 0,
            "proxied_attaches": 0,
            "deduplicated": 0,
            "written_again": 0,
        }

    # ------------------------------------------------------------------ owners
    async def owner(self, kind: str, p: int, context) -> str | None:
        """The owner's address, None when it is this replica; waits while nobody owns it."""
        r = self.replica
        forwarded = any(k == FORWARDED for k, _ in context.invocation_metadata() or ())
        deadline = time.monotonic() + 2 * r.config.cluster_lease_s
        while True:
            if r.usable(kind, p):
                return None
            if forwarded:
                raise RpcFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{_name(kind)} partition {p} moved off this replica; retry",
                )
            address = r.owner_address(kind, p)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise RpcFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{_name(kind)} partition {p} has no owner yet; retry",
                )
            await asyncio.sleep(POLL_S)
            await r.refresh()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    @staticmethod
    def _metadata(context) -> tuple[tuple[str, str], ...]:
        md = [(k, v) for k, v in context.invocation_metadata() or () if k in _PASSED]
        return (*md, (FORWARDED, "1"))

    # ------------------------------------------------------------------ orchestrator calls
    async def workflow_call(
        self, method: str, request, tenant: str, context, *, in_session: bool = False
    ):
        """The owner's response to ``Orchestrator/<method>``; None: handle it here. A Session
        event has no caller event id (the stream's metadata is not one event's)."""
        p = self.replica.keys.workflow_partition(tenant, request.workflow_id)
        eid = _event_id(context) if method != "GetForecast" and not in_session else ""
        if self.replica.usable(WORKFLOW, p):
            return await self._here(method, eid)
        key = (tenant, request.workflow_id)
        before = self._tails.get(key)
        mine = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if before is not None:
                await asyncio.shield(before)
            request.tenant = tenant
            # One id for every attempt, ours too if the partition becomes ours meanwhile:
            # an attempt whose answer was lost is then found in the log, not applied again.
            eid = eid or uuid.uuid4().hex
            out = await self._send(method, request, p, context, eid)
            return await self._here(method, eid) if out is None else out
        finally:
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]

    async def _here(self, method: str, eid: str):
        """This replica owns the workflow: None (apply it here, under ``eid``), or the
        answer of the event with that id applied before (a resend)."""
        if not eid:
            return None
        seen = self.replica.follower.seen.lookup(eid)
        if seen is not None:
            seq, forecast, record = seen
            if isinstance(seq, asyncio.Future):
                try:
                    seq = await asyncio.shield(seq)
                except Exception:  # noqa: BLE001 - not acknowledged: written or not?
                    again = self._write_again(eid, forecast, record)
                    if again is None:  # not in the state any more: apply it anew below
                        self.replica.follower.seen.forget(eid)
                        seen = None
                    else:
                        seq = await again
            if seen is not None:
                self.counters["deduplicated"] += 1
                response = getattr(pb, f"{method}Response")(event_seq=seq)
                if forecast is not None:
                    response.forecast.CopyFrom(forecast_to_pb(forecast))
                    response.forecast.workflow_id = forecast.workflow_id.split("/", 1)[-1]
                return response
        EVENT_ID.set(eid)
        return None

    def accepted(self, eid: str, future: asyncio.Future, forecast, record: EventRecord) -> None:
        """The event ``record`` with id ``eid`` is applied here and waits for its write
        (``future``); once written, its record is not kept."""
        seen = self.replica.follower.seen
        seen.remember(eid, future, forecast, record)

        def written(done: asyncio.Future) -> None:
            now = seen.lookup(eid)
            ok = not done.cancelled() and done.exception() is None
            if ok and now is not None and now[0] is done:
                seen.remember(eid, done.result(), forecast)

        future.add_done_callback(written)

    def _write_again(self, eid: str, forecast, record: EventRecord | None):
        """A resend of ``eid``, whose write failed or was not acknowledged: it may or may
        not be in the log (a lost reply). While the partition's lease is the one the event
        was accepted under, the state here still holds it (nothing rebuilt the partition
        since): its record is written again, not applied -- the append script answers the
        seq of an earlier run that wrote it. Otherwise None: the state was rebuilt from the
        log since, without it (the log had no such id then), so it is applied anew."""
        if record is None or not record.lease:
            return None
        p = self.replica.keys.workflow_partition(record.tenant, record.workflow_id)
        if self.replica.holder(p) != record.lease:
            return None
        self.counters["written_again"] += 1
        future = self.recorder.record(record)
        self.accepted(eid, future, forecast, record)
        return future

    async def _send(self, method: str, request, p: int, context, eid: str):
        """Send to the owner under event id ``eid``; on UNAVAILABLE (the owner died, or
        handed the partition over) send again, same id, to whoever owns it next: the owner
        answers a resend of an id it has logged from the log, so nothing is applied twice."""
        deadline = time.monotonic() + 3 * self.replica.config.cluster_lease_s
        while True:
            address = await self.owner(WORKFLOW, p, context)
            if address is None:
                return None
            stub = pb_grpc.OrchestratorStub(self._channel(address))
            self.counters["forwarded_calls"] += 1
            try:
                return await getattr(stub, method)(
                    request,
                    timeout=self.timeout_s,
                    metadata=(*self._metadata(context), (EVENT_ID_HEADER, eid)),
                )
            except grpc.aio.AioRpcError as exc:
                again = exc.code() == grpc.StatusCode.UNAVAILABLE
                if not again or time.monotonic() > deadline:
                    raise RpcFailure(exc.code(), exc.details() or "") from None
            await asyncio.sleep(POLL_S)
            await self.replica.refresh()

    # ------------------------------------------------------------------ engine streams
    async def engine_owner(self, engine_id: str, context) -> str | None:
        return await self.owner(ENGINE, self.replica.keys.engine_partition(engine_id), context)

    async def proxy_attach(self, address: str, first, request_iterator, context) -> AsyncIterator:
        """Relay an Attach stream to its owner: messages up, plans down."""

        async def upstream():
            yield first
            async for msg in request_iterator:
                yield msg

        stub = pb_grpc.EngineLinkStub(self._channel(address))
        self.counters["proxied_attaches"] += 1
        call = stub.Attach(upstream(), metadata=self._metadata(context))
        try:
            async for plan in call:
                yield plan
        except grpc.aio.AioRpcError as exc:
            raise RpcFailure(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def _event_id(context) -> str:
    for k, value in context.invocation_metadata() or ():
        if k == EVENT_ID_HEADER:
            if len(value) > MAX_EVENT_ID:
                raise RpcFailure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{EVENT_ID_HEADER} has {len(value)} characters; the limit is {MAX_EVENT_ID}",
                )
            return value
    return ""


def _name(kind: str) -> str:
    return "workflow" if kind == WORKFLOW else "engine"
