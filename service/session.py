"""``AsyncSession``: many workflows' orchestrator events over one ``Session`` stream
(``AsyncPbkvClient.session()``)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import grpc

from pbkv.predictor.forecast import Forecast
from pbkv.service.client import PbkvError
from pbkv.service.convert import (
    end_request,
    forecast_of_reply,
    start_request,
    step_finished_request,
    step_started_request,
)
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

_CODES = {code.value[0]: code for code in grpc.StatusCode}
MAX_SESSION_EVENTS = 1_024  # the server's default max_session_events
MAX_BATCH_BYTES = 4 * 1024 * 1024  # half the server's default max_message_bytes (8 MiB)
EVENT_OVERHEAD_BYTES = 8  # an event's field tag and length prefix inside the request
MAX_INFLIGHT = 64  # the largest max_inflight one may set
MAX_INFLIGHT_NONE = 1 << 62  # no limit (the default)
DEFAULT_LINGER_S = 0.002  # the coalescing window (docs/service.md, "Coalescing")
MAX_LINGER_S = 1.0  # the longest coalescing window one may set


class AsyncSession:
    """Orchestrator events over one ``Session`` stream: each call sends one event and
    awaits its result (the recorded sequence number, the forecast). Many coroutines may share
    one session: events sent while a write is in flight go out together in the next
    ``SessionRequest``. Each call has a deadline of ``timeout_s``; a failed event raises
    ``PbkvError`` like the unary call would. Once the stream has ended, every call fails at
    once with UNAVAILABLE (naming how the stream ended). A request holds at most
    ``max_batch`` events and ``max_batch_bytes`` bytes (the server's ``max_session_events``
    and ``max_message_bytes`` are 1,024 and 8 MiB; an event bigger than the byte cap goes
    alone). ``max_inflight`` (default: no limit) caps the requests awaiting their answers:
    events sent meanwhile wait and go out together once one is answered, so under load
    requests grow instead of multiplying (per-message costs dominate on both sides: less CPU
    per event), at a latency cost -- an event held back misses the store commit its request
    would have joined (``docs/service.md``). ``linger_s`` (default 2 ms; 0: off) coalesces
    while the stream is busy: an event queued while a request of this session awaits its
    answer waits until the oldest queued event is ``linger_s`` old, a full request
    (``max_batch`` events or ``max_batch_bytes``) is queued, nothing is unanswered any more,
    or the session closes -- whichever comes first -- and then what is queued goes; with
    nothing unanswered an event goes at once, so an idle stream adds no delay (Nagle's rule,
    with a time bound). Events keep their order and none waits longer than ``linger_s`` for
    the window; the gRPC cost per message (~60-130 us on each side) is then paid per window,
    not per event. An event whose caller timed out before it was sent is not sent."""

    def __init__(
        self,
        stub: pb_grpc.OrchestratorStub,
        metadata,
        timeout_s: float,
        max_batch: int = 256,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_inflight: int | None = None,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        if not 0 < max_batch <= MAX_SESSION_EVENTS:
            raise ValueError(f"max_batch must be in [1, {MAX_SESSION_EVENTS}], got {max_batch}")
        if max_batch_bytes <= 0:
            raise ValueError(f"max_batch_bytes must be > 0, got {max_batch_bytes}")
        if max_inflight is not None and not 0 < max_inflight <= MAX_INFLIGHT:
            raise ValueError(f"max_inflight must be in [1, {MAX_INFLIGHT}], got {max_inflight}")
        if not 0 <= linger_s <= MAX_LINGER_S:
            raise ValueError(f"linger_s must be in [0, {MAX_LINGER_S}], got {linger_s}")
        self._stub, self._md, self.timeout_s = stub, metadata, timeout_s
        self.linger_s = linger_s
        self.max_batch, self.max_batch_bytes = max_batch, max_batch_bytes
        self.max_inflight = MAX_INFLIGHT_NONE if max_inflight is None else max_inflight
        self._unanswered: deque[int] = deque()  # the last event id of each request in flight
        self._ended: PbkvError | None = None  # set once the stream is over
        self._futures: dict[int, asyncio.Future] = {}
        self._outgoing: list[pb.SessionEvent] = []
        self._lingering_bytes = 0  # while lingering: the queued events' bytes (with overhead)
        self._oldest_s = 0.0  # loop time the oldest queued event was queued at
        self._flush: asyncio.Future | None = None  # set while the writer lingers
        self._wake = asyncio.Event()
        self._next_id = 0
        self._call = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def __aenter__(self) -> AsyncSession:
        self._call = self._stub.Session(metadata=self._md)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write())]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._call is None:
            return
        self._closing = True
        self._wake.set()
        self._end_linger()
        await asyncio.wait_for(
            asyncio.shield(asyncio.gather(*self._tasks, return_exceptions=True)), self.timeout_s
        )
        self._call = None

    async def _write(self) -> None:
        """Sends what callers queued, one request per wake-up (the batching point)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._ended is not None:
                    return
                while self._outgoing and len(self._unanswered) < self.max_inflight:
                    if self.linger_s and self._unanswered:
                        await self._linger()
                        if not self._outgoing:  # their callers timed out meanwhile
                            break
                    batch = self._next_batch()
                    self._unanswered.append(batch[-1].id)
                    await self._call.write(pb.SessionRequest(events=batch))
                if self._closing and not self._outgoing:
                    await self._call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the reader reports the stream's end to every waiter

    async def _linger(self) -> None:
        """Wait until the oldest queued event is ``linger_s`` old, a full request is queued
        or the session closes (``_end_linger``), whichever comes first."""
        loop = asyncio.get_running_loop()
        delay = self._oldest_s + self.linger_s - loop.time()
        if delay <= 0 or self._closing or len(self._outgoing) >= self.max_batch:
            return
        self._lingering_bytes = sum(e.ByteSize() + EVENT_OVERHEAD_BYTES for e in self._outgoing)
        if self._lingering_bytes >= self.max_batch_bytes:
            return
        self._flush = loop.create_future()
        timer = loop.call_later(delay, self._end_linger)
        try:
            await self._flush
        finally:
            timer.cancel()
            self._flush = None

    def _end_linger(self) -> None:
        if self._flush is not None and not self._flush.done():
            self._flush.set_result(None)

    def _next_batch(self) -> list[pb.SessionEvent]:
        """The oldest queued events that fit ``max_batch`` and ``max_batch_bytes``."""
        size, count = 0, 0
        for event in self._outgoing[: self.max_batch]:
            nbytes = event.ByteSize() + EVENT_OVERHEAD_BYTES
            if count and size + nbytes > self.max_batch_bytes:
                break
            size, count = size + nbytes, count + 1
        batch = self._outgoing[:count]
        del self._outgoing[:count]
        return batch

    async def _read(self) -> None:
        error = PbkvError(grpc.StatusCode.UNAVAILABLE, "the session stream ended")
        try:
            async for reply in self._call:
                for result in reply.results:
                    future = self._futures.pop(result.id, None)
                    if future is not None and not future.done():
                        future.set_result(result)
                # Results come in send order: requests up to the last one are answered.
                last = reply.results[-1].id if reply.results else 0
                while self._unanswered and self._unanswered[0] <= last:
                    self._unanswered.popleft()
                if not self._unanswered:
                    self._end_linger()  # nothing in flight: what lingers goes now
                self._wake.set()
        except grpc.aio.AioRpcError as exc:
            error = PbkvError(exc.code(), exc.details() or "")
        finally:
            self._ended = PbkvError(
                grpc.StatusCode.UNAVAILABLE,
                f"the session stream has ended ({error.code.name}: {error.message})",
            )
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(error)
            self._futures.clear()
            self._wake.set()  # the writer stops too
            self._end_linger()

    async def _send(self, **event) -> pb.SessionResult:
        if self._call is None or self._closing:
            raise RuntimeError("use the session inside `async with`")
        if self._ended is not None:
            raise self._ended
        self._next_id += 1
        rid = self._next_id
        future = asyncio.get_running_loop().create_future()
        # A caller cancelled while waiting must not leave an unretrieved exception behind.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._futures[rid] = future
        message = pb.SessionEvent(id=rid, **event)
        if not self._outgoing:
            self._oldest_s = asyncio.get_running_loop().time()
        self._outgoing.append(message)
        self._wake.set()
        if self._flush is not None:  # the writer lingers: a full request ends the wait
            self._lingering_bytes += message.ByteSize() + EVENT_OVERHEAD_BYTES
            if (
                len(self._outgoing) >= self.max_batch
                or self._lingering_bytes >= self.max_batch_bytes
            ):
                self._end_linger()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await future
        except TimeoutError:
            for i, queued in enumerate(self._outgoing):  # still unsent: never send it
                if queued is message:
                    del self._outgoing[i]
                    break
            raise PbkvError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply within {self.timeout_s} s"
            ) from None
        finally:
            self._futures.pop(rid, None)
        if result.code != 0:
            raise PbkvError(_CODES.get(result.code, grpc.StatusCode.UNKNOWN), result.message)
        return result

    async def start_workflow(
        self,
        workflow_id: str,
        app: str,
        *,
        task: str = "",
        now_s: float | None = None,
        tenant: str | None = None,
    ) -> int:
        return (
            await self._send(start=start_request(workflow_id, app, task, now_s, tenant))
        ).event_seq

    async def step_started(
        self,
        workflow_id: str,
        agent: str,
        *,
        parallel_group: str | None = None,
        now_s: float | None = None,
        tenant: str | None = None,
    ) -> int:
        return (
            await self._send(
                step_started=step_started_request(workflow_id, agent, parallel_group, now_s, tenant)
            )
        ).event_seq

    async def step_finished(self, workflow_id: str, agent: str, **fields: Any) -> Forecast | None:
        reply = await self._send(step_finished=step_finished_request(workflow_id, agent, **fields))
        return forecast_of_reply(reply)

    async def end_workflow(
        self, workflow_id: str, *, now_s: float | None = None, tenant: str | None = None
    ) -> int:
        return (await self._send(end=end_request(workflow_id, now_s, tenant))).event_seq
