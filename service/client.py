"""Orchestrator/operator clients: ``PbkvClient`` (blocking) and ``AsyncPbkvClient`` (asyncio).

    from pbkv.service.client import PbkvClient
    with PbkvClient("127.0.0.1:50151") as pbkv:
        pbkv.start_workflow("run-1", app="chatdev", task="build a snake game")
        forecast = pbkv.step_finished("run-1", "Programmer", output_text="def main(): ...")
        pbkv.end_workflow("run-1")

Every call carries a deadline (``timeout_s``). Failures raise ``PbkvError`` with the gRPC
status ``code`` and the service's message (which names the offending field).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pbkv.predictor.forecast import Forecast
from pbkv.service.config import DEFAULT_GRPC_PORT, LOOPBACK
from pbkv.service.convert import (
    end_request,
    forecast_of_reply,
    start_request,
    step_finished_request,
    step_started_request,
)
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

DEFAULT_TARGET = f"{LOOPBACK}:{DEFAULT_GRPC_PORT}"


class PbkvError(RuntimeError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    workflow_id: str
    app: str
    tenant: str
    task: str
    num_steps: int
    last_agent: str
    started_s: float | None


def _channel_args(tls_ca_file: Path | None):
    creds = (
        grpc.ssl_channel_credentials(root_certificates=Path(tls_ca_file).read_bytes())
        if tls_ca_file is not None
        else None
    )
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    return creds, options


def _metadata(tenant: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if tenant:
        md.append(("x-pbkv-tenant", tenant))
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def _summaries(msg: pb.ListWorkflowsResponse) -> list[WorkflowSummary]:
    return [
        WorkflowSummary(
            w.workflow_id,
            w.app,
            w.tenant,
            w.task,
            w.num_steps,
            w.last_agent,
            w.started_s if w.HasField("started_s") else None,
        )
        for w in msg.workflows
    ]


class PbkvClient:
    """Blocking client. Thread-safe (one channel, many callers)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tenant: str | None = None,
        token: str | None = None,
        tls_ca_file: Path | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        creds, options = _channel_args(tls_ca_file)
        self._channel = (
            grpc.secure_channel(target, creds, options=options)
            if creds
            else grpc.insecure_channel(target, options=options)
        )
        self._orch = pb_grpc.OrchestratorStub(self._channel)
        self._ops = pb_grpc.OperatorStub(self._channel)
        self._md = _metadata(tenant, token)
        self.timeout_s = timeout_s

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s, metadata=self._md)
        except grpc.RpcError as exc:
            raise PbkvError(exc.code(), exc.details() or "") from None

    def start_workflow(
        self,
        workflow_id: str,
        app: str,
        *,
        task: str = "",
        now_s: float | None = None,
        tenant: str | None = None,
    ) -> int:
        return self._call(
            self._orch.StartWorkflow, start_request(workflow_id, app, task, now_s, tenant)
        ).event_seq

    def step_started(
        self,
        workflow_id: str,
        agent: str,
        *,
        parallel_group: str | None = None,
        now_s: float | None = None,
        tenant: str | None = None,
    ) -> int:
        return self._call(
            self._orch.StepStarted,
            step_started_request(workflow_id, agent, parallel_group, now_s, tenant),
        ).event_seq

    def step_finished(self, workflow_id: str, agent: str, **fields: Any) -> Forecast | None:
        """Fields: output_text, context_text, input_tokens, output_tokens, parallel_group,
        step_index, start_s, end_s, phase, prompt (pairs of segment id and tokens), tenant."""
        return self.step_finished_with_seq(workflow_id, agent, **fields)[1]

    def step_finished_with_seq(
        self, workflow_id: str, agent: str, **fields: Any
    ) -> tuple[int, Forecast | None]:
        """``step_finished`` that also returns the event's sequence number in the store."""
        msg = self._call(
            self._orch.StepFinished, step_finished_request(workflow_id, agent, **fields)
        )
        return msg.event_seq, forecast_of_reply(msg)

    def end_workflow(
        self, workflow_id: str, *, now_s: float | None = None, tenant: str | None = None
    ) -> int:
        return self._call(self._orch.EndWorkflow, end_request(workflow_id, now_s, tenant)).event_seq

    def forecast(self, workflow_id: str, *, tenant: str | None = None) -> Forecast | None:
        return forecast_of_reply(
            self._call(
                self._orch.GetForecast,
                pb.GetForecastRequest(workflow_id=workflow_id, tenant=tenant or ""),
            )
        )

    def stats(self) -> dict[str, Any]:
        return json.loads(self._call(self._ops.GetStats, pb.GetStatsRequest()).stats_json)

    def list_workflows(self, limit: int = 0) -> list[WorkflowSummary]:
        return _summaries(self._call(self._ops.ListWorkflows, pb.ListWorkflowsRequest(limit=limit)))

    def reload_model(self, model_path: str | Path = "") -> str:
        return self._call(
            self._ops.ReloadModel, pb.ReloadModelRequest(model_path=str(model_path))
        ).model_version

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise PbkvError(
                grpc.StatusCode.UNAVAILABLE, f"service not reachable within {timeout_s} s"
            ) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PbkvClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncPbkvClient:
    """asyncio client (``grpc.aio``); same methods as ``PbkvClient``, awaitable."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tenant: str | None = None,
        token: str | None = None,
        tls_ca_file: Path | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        creds, options = _channel_args(tls_ca_file)
        self._channel = (
            grpc.aio.secure_channel(target, creds, options=options)
            if creds
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._orch = pb_grpc.OrchestratorStub(self._channel)
        self._ops = pb_grpc.OperatorStub(self._channel)
        self._md = _metadata(tenant, token)
        self.timeout_s = timeout_s

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._md)
        except grpc.aio.AioRpcError as exc:
            raise PbkvError(exc.code(), exc.details() or "") from None

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
            await self._call(
                self._orch.StartWorkflow, start_request(workflow_id, app, task, now_s, tenant)
            )
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
            await self._call(
                self._orch.StepStarted,
                step_started_request(workflow_id, agent, parallel_group, now_s, tenant),
            )
        ).event_seq

    async def step_finished(self, workflow_id: str, agent: str, **fields: Any) -> Forecast | None:
        return forecast_of_reply(
            await self._call(
                self._orch.StepFinished, step_finished_request(workflow_id, agent, **fields)
            )
        )

    async def end_workflow(
        self, workflow_id: str, *, now_s: float | None = None, tenant: str | None = None
    ) -> int:
        return (
            await self._call(self._orch.EndWorkflow, end_request(workflow_id, now_s, tenant))
        ).event_seq

    async def forecast(self, workflow_id: str, *, tenant: str | None = None) -> Forecast | None:
        return forecast_of_reply(
            await self._call(
                self._orch.GetForecast,
                pb.GetForecastRequest(workflow_id=workflow_id, tenant=tenant or ""),
            )
        )

    async def stats(self) -> dict[str, Any]:
        msg = await self._call(self._ops.GetStats, pb.GetStatsRequest())
        return json.loads(msg.stats_json)

    async def list_workflows(self, limit: int = 0) -> list[WorkflowSummary]:
        return _summaries(
            await self._call(self._ops.ListWorkflows, pb.ListWorkflowsRequest(limit=limit))
        )

    async def reload_model(self, model_path: str | Path = "") -> str:
        msg = await self._call(
            self._ops.ReloadModel, pb.ReloadModelRequest(model_path=str(model_path))
        )
        return msg.model_version

    def session(self) -> AsyncSession:
        """One ``Session`` stream for many workflows' events (``async with``)."""
        return AsyncSession(self._orch, self._md, self.timeout_s)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncPbkvClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


_CODES = {code.value[0]: code for code in grpc.StatusCode}
MAX_SESSION_EVENTS = 1_024  # the server's default max_session_events
MAX_BATCH_BYTES = 4 * 1024 * 1024  # half the server's default max_message_bytes (8 MiB)
EVENT_OVERHEAD_BYTES = 8  # an event's field tag and length prefix inside the request


class AsyncSession:
    """Orchestrator events over one ``Session`` stream: each call sends one event and
    awaits its result (the recorded sequence number, the forecast). Many coroutines may share
    one session: events sent while a write is in flight go out together in the next
    ``SessionRequest``. Each call has a deadline of ``timeout_s``; a failed event raises
    ``PbkvError`` like the unary call would. Once the stream has ended, every call fails at
    once with UNAVAILABLE (naming how the stream ended). A request holds at most
    ``max_batch`` events and ``max_batch_bytes`` bytes (the server's ``max_session_events``
    and ``max_message_bytes`` are 1,024 and 8 MiB; an event bigger than the byte cap goes
    alone)."""

    def __init__(
        self,
        stub: pb_grpc.OrchestratorStub,
        metadata,
        timeout_s: float,
        max_batch: int = 256,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if not 0 < max_batch <= MAX_SESSION_EVENTS:
            raise ValueError(f"max_batch must be in [1, {MAX_SESSION_EVENTS}], got {max_batch}")
        if max_batch_bytes <= 0:
            raise ValueError(f"max_batch_bytes must be > 0, got {max_batch_bytes}")
        self._stub, self._md, self.timeout_s = stub, metadata, timeout_s
        self.max_batch, self.max_batch_bytes = max_batch, max_batch_bytes
        self._ended: PbkvError | None = None  # set once the stream is over
        self._futures: dict[int, asyncio.Future] = {}
        self._outgoing: list[pb.SessionEvent] = []
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
                while self._outgoing:
                    await self._call.write(pb.SessionRequest(events=self._next_batch()))
                if self._closing:
                    await self._call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the reader reports the stream's end to every waiter

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
        self._outgoing.append(pb.SessionEvent(id=rid, **event))
        self._wake.set()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await future
        except TimeoutError:
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
