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
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from pbkv.service.routing import RoutedSession
    from pbkv.service.session import AsyncSession

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


MAX_TARGETS = 64
EVENT_ID_HEADER = "x-pbkv-event-id"  # cluster: the service applies one id once
RESEND_PAUSE_S = 0.2


def grpc_target(target: str) -> str:
    """``HOST:PORT`` as is; several, comma-separated (replicas of one cluster), as one gRPC
    target over all their addresses: the channel connects to the first that answers and moves
    to another when it fails (``pick_first``); a call that never reached a replica is retried
    on another by gRPC itself. Host names are resolved once, here."""
    parts = [t.strip() for t in target.split(",") if t.strip()]
    if len(parts) <= 1:
        return target
    if len(parts) > MAX_TARGETS:
        raise ValueError(f"target lists {len(parts)} addresses; the limit is {MAX_TARGETS}")
    addresses = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"target {part!r} must be HOST:PORT")
        try:
            addresses.append(f"{socket.gethostbyname(host)}:{port}")
        except OSError as exc:
            raise ValueError(f"target {part!r}: cannot resolve {host!r}: {exc}") from None
    return "ipv4:" + ",".join(addresses)


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
    """Blocking client. Thread-safe (one channel, many callers). ``target`` may list several
    replicas of a cluster, comma-separated (``grpc_target``)."""

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
            grpc.secure_channel(grpc_target(target), creds, options=options)
            if creds
            else grpc.insecure_channel(grpc_target(target), options=options)
        )
        self._orch = pb_grpc.OrchestratorStub(self._channel)
        self._ops = pb_grpc.OperatorStub(self._channel)
        self._md = _metadata(tenant, token)
        self.timeout_s = timeout_s
        self._replicas = "," in target

    def _call(self, method, request):
        """One call. With several replicas (a cluster) the call carries an event id and is
        sent again, same id, on UNAVAILABLE until ``timeout_s``: the cluster applies an id
        once, so a resend after a lost answer is answered, not applied twice. ``timeout_s``
        bounds the whole call, resends included: each attempt gets only the time left."""
        md, deadline = self._md, time.monotonic() + self.timeout_s
        if self._replicas:
            md = (*md, (EVENT_ID_HEADER, uuid.uuid4().hex))
        while True:
            try:
                return method(request, timeout=deadline - time.monotonic(), metadata=md)
            except grpc.RpcError as exc:
                again = self._replicas and exc.code() == grpc.StatusCode.UNAVAILABLE
                if not again or time.monotonic() + RESEND_PAUSE_S > deadline:
                    raise PbkvError(exc.code(), exc.details() or "") from None
            time.sleep(RESEND_PAUSE_S)

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
        self._open = lambda address: (
            grpc.aio.secure_channel(address, creds, options=options)
            if creds
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._channel = self._open(grpc_target(target))
        self._orch = pb_grpc.OrchestratorStub(self._channel)
        self._ops = pb_grpc.OperatorStub(self._channel)
        self._md = _metadata(tenant, token)
        self._tenant = tenant
        self.timeout_s = timeout_s
        self._replicas = "," in target

    async def _call(self, method, request):
        """As ``PbkvClient._call`` (event id and resends with several replicas)."""
        md, deadline = self._md, time.monotonic() + self.timeout_s
        if self._replicas:
            md = (*md, (EVENT_ID_HEADER, uuid.uuid4().hex))
        while True:
            try:
                return await method(request, timeout=deadline - time.monotonic(), metadata=md)
            except grpc.aio.AioRpcError as exc:
                again = self._replicas and exc.code() == grpc.StatusCode.UNAVAILABLE
                if not again or time.monotonic() + RESEND_PAUSE_S > deadline:
                    raise PbkvError(exc.code(), exc.details() or "") from None
            await asyncio.sleep(RESEND_PAUSE_S)

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

    def session(self, *, route: bool | None = None, **options) -> AsyncSession | RoutedSession:
        """One ``Session`` stream for many workflows' events (``async with``); ``options``:
        ``AsyncSession``'s ``max_batch``, ``max_batch_bytes``, ``max_inflight``, ``linger_s``.
        With several replicas (``route`` defaults to that) each workflow's events go straight
        to its owner over a stream per replica (``routing.RoutedSession``); else one stream,
        and a replica forwards what it does not own."""
        from pbkv.service.session import AsyncSession

        if self._replicas if route is None else route:
            from pbkv.service.routing import RoutedSession

            return RoutedSession(
                self._channel, self._open, self._md, self.timeout_s, self._tenant, **options
            )
        return AsyncSession(self._orch, self._md, self.timeout_s, **options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncPbkvClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
