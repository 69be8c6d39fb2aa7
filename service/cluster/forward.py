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
from collections.abc import AsyncIterator

import grpc

from pbkv.service.cluster.keys import ENGINE, WORKFLOW
from pbkv.service.cluster.replica import Replica
from pbkv.service.validation import RpcFailure
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

FORWARDED = "x-pbkv-forwarded"
_PASSED = ("authorization", "x-pbkv-tenant")  # caller metadata the owner checks again
POLL_S = 0.1


class Forwarder:
    def __init__(self, replica: Replica, timeout_s: float = 30.0) -> None:
        self.replica = replica
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tails: dict[tuple[str, str], asyncio.Future] = {}
        self.counters = {"forwarded_calls": 0, "proxied_attaches": 0}

    # ------------------------------------------------------------------ owners
    async def owner(self, kind: str, p: int, context) -> str | None:
        """The owner's address, None when it is this replica; waits while nobody owns it."""
        r = self.replica
        forwarded = any(k == FORWARDED for k, _ in context.invocation_metadata() or ())
        deadline = time.monotonic() + 2 * r.config.cluster_lease_s
        while True:
            if (kind, p) in r.ready:
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
    async def workflow_call(self, method: str, request, tenant: str, context):
        """The owner's response to ``Orchestrator/<method>``; None: handle it here."""
        p = self.replica.keys.workflow_partition(tenant, request.workflow_id)
        if (WORKFLOW, p) in self.replica.ready:
            return None
        key = (tenant, request.workflow_id)
        before = self._tails.get(key)
        mine = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if before is not None:
                await asyncio.shield(before)
            request.tenant = tenant
            return await self._send(method, request, p, context)
        finally:
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]

    async def _send(self, method: str, request, p: int, context):
        """Send to the owner; a call that never reached it (the owner is dead: connection
        refused) is sent again once the partition has a new owner -- it cannot have been
        applied. A call that failed after it was sent is not repeated (it may have been)."""
        deadline = time.monotonic() + 3 * self.replica.config.cluster_lease_s
        while True:
            address = await self.owner(WORKFLOW, p, context)
            if address is None:
                return None
            stub = pb_grpc.OrchestratorStub(self._channel(address))
            self.counters["forwarded_calls"] += 1
            try:
                return await getattr(stub, method)(
                    request, timeout=self.timeout_s, metadata=self._metadata(context)
                )
            except grpc.aio.AioRpcError as exc:
                unsent = exc.code() == grpc.StatusCode.UNAVAILABLE and _never_sent(exc)
                if not unsent or time.monotonic() > deadline:
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


def _never_sent(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return "failed to connect" in details or "connection refused" in details


def _name(kind: str) -> str:
    return "workflow" if kind == WORKFLOW else "engine"
