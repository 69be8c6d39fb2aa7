"""The Orchestrator's ``Session`` stream: batched workflow events in, results in order out.

A mixin of ``OrchestratorServicer`` (``orchestrator.py``), which provides the per-event
appliers (``_appliers``: validate, apply to the manager, queue for the store, no ``await``),
the cluster router and forwarding (``router``, ``_forward_event``), the forecast conversion
(``_to_pb``), ``config``, ``wiring`` and the CPU meter (``_meter``). This module holds only
the stream's mechanism: read requests into a bounded window, answer each once its events are
recorded, and fold already-recorded later requests into the same reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

import grpc

from pbkv.predictor.forecast import Forecast
from pbkv.service import validation as v
from pbkv.service.auth import MalformedRequest
from pbkv.service.recorder import RecorderFull
from pbkv.service.servicers.wiring import metadata_tenant
from pbkv.service.stores.base import StoreError
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2 as pb

log = logging.getLogger(__name__)

SESSION_WINDOW = 256  # Session requests (event batches) awaiting their commit per stream
YIELD_EVERY = 64  # Session events applied between two yields to the event loop


class SessionStream:
    async def Session(self, request_iterator, context):  # noqa: N802
        """Orchestrator events on one stream, answered in order (see the .proto). A bad event
        gets an error result; the stream goes on. A request that is not one (undecodable, or
        over ``max_session_events``) ends the stream with INVALID_ARGUMENT once the requests
        before it are answered. At most ``SESSION_WINDOW`` requests wait for their commit;
        beyond that the server stops reading (flow control pushes back)."""
        md_tenant = metadata_tenant(context)
        pending: asyncio.Queue = asyncio.Queue(SESSION_WINDOW)
        meter = self._meter

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    if meter is not None:
                        meter.requests += 1
                    v.capped(len(req.events), "events", "max_session_events", self.config)
                    batch = []
                    for i, e in enumerate(req.events):
                        if i and not i % YIELD_EVERY:
                            await asyncio.sleep(0)  # let health checks and other calls in
                        batch.append(self._session_event(e, md_tenant, context))
                    await pending.put(batch)
            except RpcFailure as exc:
                await pending.put(exc)
            finally:
                await pending.put(None)

        task = asyncio.create_task(reader())
        limit = self.config.max_session_events  # results per reply, as events per request
        try:
            batch = await pending.get()
            while batch is not None:
                if isinstance(batch, RpcFailure):
                    if not isinstance(batch, MalformedRequest):  # the gate logged that one
                        log.warning("Session ended: %s %s", batch.code.name, batch.message)
                    self.wiring.observe("Session", batch.code.name, 0.0)
                    await context.abort(batch.code, batch.message)
                reply = pb.SessionReply()
                await self._answer(batch, reply)
                # Later requests whose events are already recorded go out in the same reply:
                # under load one write answers many small requests.
                carried = False
                while not pending.empty():
                    batch = pending.get_nowait()
                    if not _recorded(batch) or len(reply.results) + len(batch) > limit:
                        carried = True
                        break
                    await self._answer(batch, reply)
                if meter is not None:
                    meter.replies += 1
                yield reply
                if not carried:
                    batch = await pending.get()
        finally:
            task.cancel()

    async def _answer(self, batch: list, reply: pb.SessionReply) -> None:
        """Add the results of one request's events to ``reply``, each once recorded (or
        answered by the owning replica, in cluster mode)."""
        observer = self.wiring.observer  # None: no metrics (no per-event label or clock)
        results = reply.results
        for rid, kind, t0, future, forecast, failure in batch:
            if failure is None:
                try:
                    out = await future
                    if isinstance(out, tuple):  # forwarded to the owning replica
                        out, forecast = out
                except StoreError as exc:
                    failure = RpcFailure(grpc.StatusCode.UNAVAILABLE, f"trace store: {exc}")
                except RpcFailure as exc:
                    failure = RpcFailure(exc.code, exc.message)
                except RecorderFull as exc:
                    failure = RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            if failure is not None:
                code, message = failure.code.value[0], failure.message
                results.add(id=rid, code=code, message=message)
            elif forecast is None:
                results.add(id=rid, event_seq=out)
            elif isinstance(forecast, Answer):
                self._to_pb(results.add(id=rid, event_seq=out).forecast, *forecast)
            else:  # the owning replica's message
                results.add(id=rid, event_seq=out).forecast.CopyFrom(forecast)
            if observer is not None:
                code = failure.code.name if failure else "OK"
                observer(f"Session.{kind}", code, time.perf_counter() - t0)

    def _session_event(self, event: pb.SessionEvent, md_tenant: str | None, context=None):
        t0 = time.perf_counter()
        kind = event.WhichOneof("event")
        try:
            if kind is None:
                raise v.invalid(f"event {event.id}: no event set")
            request = getattr(event, kind)
            tenant = v.tenant(request.tenant, md_tenant)
            if self.router is not None and not self.router.replica.owns_workflow(
                tenant, request.workflow_id
            ):
                forwarded = self._forward_event(kind, request, tenant, context)
                return event.id, kind, t0, asyncio.ensure_future(forwarded), None, None
            future, forecast = self._appliers[kind](request, tenant)
            return event.id, kind, t0, future, forecast, None
        except RecorderFull as exc:
            return (
                event.id,
                kind,
                t0,
                None,
                None,
                RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)),
            )
        except RpcFailure as exc:
            # A fresh failure: the caught one holds its traceback's frames (and its cause's),
            # which a batch of failing events would keep alive for the collector to scan.
            return event.id, kind, t0, None, None, RpcFailure(exc.code, exc.message)


class Answer(NamedTuple):
    """A step's forecast and the caller's workflow id, converted when the reply is built."""

    forecast: Forecast
    workflow_id: str


def _recorded(batch: list | RpcFailure | None) -> bool:
    """A request's events all have their answer (recorded or failed)."""
    return isinstance(batch, list) and all(f is None or f.done() for _, _, _, f, _, _ in batch)
