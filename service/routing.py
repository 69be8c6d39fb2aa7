"""Client-side routing to a cluster's replicas (``docs/cluster.md``).

A client given several replicas (``AsyncPbkvClient("h:1,h:2")``) reads the partition map from
the replica it is connected to (``GetStats``' ``cluster`` section: the address of each
workflow partition's owner, refreshed every ``REFRESH_S``) and ``RoutedSession`` sends each
workflow's events over a Session stream to its owner directly, so no replica forwards them
(one gRPC hop and one server's per-event work less). A workflow whose owner is unknown (no
map yet, an owner being replaced) goes over the stream to the first replica, which forwards
as for any client. Events of one workflow stay in order as long as each waits for the
previous one's answer (what every call of the client does); a stream that ends (its replica
died) is dropped and the next event of its workflows goes by the refreshed map.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import grpc

from pbkv.predictor.forecast import Forecast
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.session import AsyncSession
from pbkv.service.validation import DEFAULT_TENANT
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often the partition map is read again
MAX_OWNERS = 1_024  # partitions a map may list (ClusterKeys' limit)


def owners_of(stats: dict[str, Any]) -> list[str | None] | None:
    """The workflow partitions' owner addresses in a replica's stats (None: not a cluster)."""
    owners = (stats.get("cluster") or {}).get("workflow_owners")
    if not isinstance(owners, list) or not 0 < len(owners) <= MAX_OWNERS:
        return None
    return [o if isinstance(o, str) and o else None for o in owners]


class RoutedSession:
    """``AsyncSession``'s calls, each sent to its workflow's owner (module doc). ``channel``
    is the client's (its first replica); ``open_channel(address)`` makes a channel to
    another replica with the client's credentials."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        open_channel,
        metadata,
        timeout_s: float,
        tenant: str | None,
        **options,
    ) -> None:
        self._channel, self._open = channel, open_channel
        self._md, self.timeout_s, self._options = metadata, timeout_s, options
        self._tenant = tenant or DEFAULT_TENANT
        stub = pb_grpc.OrchestratorStub(channel)
        self._default = AsyncSession(stub, metadata, timeout_s, **options)
        self._ops = pb_grpc.OperatorStub(channel)
        self._keys: ClusterKeys | None = None
        self._owners: list[str | None] = []
        self._sessions: dict[str, tuple[grpc.aio.Channel, AsyncSession]] = {}
        self._refresher: asyncio.Task | None = None
        self.counters = {"routed": 0, "unrouted": 0, "map_reads": 0}

    async def __aenter__(self) -> RoutedSession:
        await self._default.__aenter__()
        await self._refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._keep_fresh())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        for channel, session in self._sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
            await channel.close()
        self._sessions.clear()
        await self._default.close()

    async def _refresh(self) -> None:
        try:
            msg = await self._ops.GetStats(
                pb.GetStatsRequest(), timeout=self.timeout_s, metadata=self._md
            )
            owners = owners_of(json.loads(msg.stats_json))
        except (grpc.aio.AioRpcError, ValueError) as exc:
            log.debug("partition map not read: %s", exc)
            return
        self.counters["map_reads"] += 1
        if owners is None:
            self._owners, self._keys = [], None
            return
        if self._keys is None or self._keys.workflow_partitions != len(owners):
            self._keys = ClusterKeys(workflow_partitions=len(owners))
        self._owners = owners

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self._refresh()

    async def _session(self, workflow_id: str, tenant: str | None) -> AsyncSession:
        """The stream to the workflow's owner (the first replica's if unknown)."""
        keys = self._keys
        address = None
        if keys is not None:
            address = self._owners[keys.workflow_partition(tenant or self._tenant, workflow_id)]
        if address is None:
            self.counters["unrouted"] += 1
            return self._default
        entry = self._sessions.get(address)
        # A stream that ended (its replica died or went away) is not used again.
        if entry is not None and entry[1]._ended is not None:  # noqa: SLF001
            del self._sessions[address]
            await entry[0].close()
            entry = None
        if entry is None:
            channel = self._open(address)
            stub = pb_grpc.OrchestratorStub(channel)
            session = AsyncSession(stub, self._md, self.timeout_s, **self._options)
            await session.__aenter__()
            self._sessions[address] = entry = (channel, session)
        self.counters["routed"] += 1
        return entry[1]

    async def start_workflow(self, workflow_id: str, app: str, **kw) -> int:
        session = await self._session(workflow_id, kw.get("tenant"))
        return await session.start_workflow(workflow_id, app, **kw)

    async def step_started(self, workflow_id: str, agent: str, **kw) -> int:
        session = await self._session(workflow_id, kw.get("tenant"))
        return await session.step_started(workflow_id, agent, **kw)

    async def step_finished(self, workflow_id: str, agent: str, **fields: Any) -> Forecast | None:
        session = await self._session(workflow_id, fields.get("tenant"))
        return await session.step_finished(workflow_id, agent, **fields)

    async def end_workflow(self, workflow_id: str, **kw) -> int:
        session = await self._session(workflow_id, kw.get("tenant"))
        return await session.end_workflow(workflow_id, **kw)
