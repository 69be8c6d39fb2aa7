"""One replica of a cluster: its leases, the partitions it owns, the outlooks of the rest.

Every ``lease_s / 3``, at a fixed rate, two tasks (``tick`` runs both once):

  ``keep_alive``
    heartbeat      -> the live replicas (a zset scored by expiry in Redis's clock)
    renew          -> each held lease (all at once, each answer alone: a failing Redis node
                      costs its own leases their renewal, no other); one no longer ours is
                      lost: a workflow partition is resynced from its log, an engine's streams end
  ``manage``
    balance        -> target = ceil(partitions / live replicas) per kind; take at most
                      ``TAKE_PER_TICK`` free partitions while under it, hand one back while
                      over it (gracefully: stop taking its writes, flush, release)
    publish        -> this replica's stats for ``pbkv cluster status`` and the dashboard

A workflow partition taken over is first rebuilt from its log (``rebuild``: from its rebuild
base, with the previous owner's forecasts), and only then accepts writes (``ready``); the
partitions it does not own it follows through their outlook streams (``follower``). A
replica that dies simply stops renewing: its leases expire after ``lease_s`` and the
survivors take them.

Fencing makes a stale owner's writes fail in Redis; on top of it a replica stops *serving* a
partition on its own clock once ``SAFE_FRACTION`` of the lease has passed since the last
renewal it sent (``usable``), so one paused past its lease (SIGSTOP, a long GC) answers nothing
from stale state when it resumes: it forwards, and its next tick finds the lease gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable

from pbkv.service.cluster.clients import ERRORS, async_client
from pbkv.service.cluster.follower import CarriedPredictor, Follower
from pbkv.service.cluster.keys import ENGINE, KINDS, WORKFLOW, ClusterKeys
from pbkv.service.cluster.leases import Lease, Leases
from pbkv.service.cluster.rebuild import rebuild
from pbkv.service.cluster.status import engine_hits
from pbkv.service.config import ServiceConfig

log = logging.getLogger(__name__)

SAFE_FRACTION = 0.8  # of the lease, counted from the moment the renewal was sent
TAKE_PER_TICK = 4  # partitions one replica takes per tick at most (bounded, balanced)
STATS_TTL_S = 60  # a dead replica's published stats vanish after this
Part = tuple[str, int]  # (kind, partition)


def cluster_keys(config: ServiceConfig) -> ClusterKeys:
    return ClusterKeys(
        config.cluster_prefix, config.cluster_partitions, config.cluster_engine_partitions
    )


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Replica:
    """Ownership of partitions for one ``pbkv serve --cluster`` process. ``holder`` may be
    called from the recorder's thread (a dict read); everything else runs on the loop."""

    def __init__(
        self,
        config: ServiceConfig,
        manager,
        carrier: CarriedPredictor | None,
        *,
        stats: Callable[[], dict] | None = None,
    ) -> None:
        assert config.cluster_url is not None
        self.config = config
        self.keys = cluster_keys(config)
        self.id = replica_id()
        self.lease_ms = int(config.cluster_lease_s * 1000)
        self.period_s = config.cluster_lease_s / 3
        self.safe_s = SAFE_FRACTION * config.cluster_lease_s  # local use after a renewal sent
        self._redis = async_client(config.cluster_url, max(self.period_s, 0.5))
        # The follower's blocking XREAD gets its own connection pool (it holds one for long).
        self._tail = async_client(config.cluster_url, 5.0)
        self.leases = Leases(self._redis, self.keys, self.id)
        self.follower = Follower(self._tail, self.keys, manager, carrier)
        self.owned: dict[Part, Lease] = {}
        self.ready: set[Part] = set()  # owned and accepting writes
        self.holders: dict[str, list[str | None]] = {k: [None] * self.keys.count(k) for k in KINDS}
        self.addresses: dict[str, str] = {}
        self.live: list[str] = []
        self.address = ""
        self.draining = False
        self.on_engines_lost: Callable[[set[int]], None] = lambda parts: None
        self.wait_flushed: Callable[[], object] | None = None  # the recorder's wait_idle
        self.log = None  # the recorder's ``log.PartitionLog`` (set by the server)
        self._stats = stats
        self._tasks: list[asyncio.Task] = []
        self._taking: set[Part] = set()
        self._refreshing: asyncio.Future | None = None
        self._valid_until: dict[Part, float] = {}  # monotonic deadline of safe local use
        counts = ("taken", "released", "lost", "rebuilt_events")
        self.counters = {**dict.fromkeys(counts, 0), "rebuild_max_s": 0.0}
        self.peers: list[dict] = []

    # ------------------------------------------------------------------ queries
    def holder(self, p: int) -> str | None:
        """This replica's lease value for workflow partition ``p`` while it holds the lease
        (a partition being handed over still flushes what it accepted before)."""
        lease = self.owned.get((WORKFLOW, p))
        return lease.holder if lease is not None else None

    def owns_workflow(self, tenant: str, workflow_id: str) -> bool:
        return self.usable(WORKFLOW, self.keys.workflow_partition(tenant, workflow_id))

    def owns_engine(self, engine_id: str) -> bool:
        return self.usable(ENGINE, self.keys.engine_partition(engine_id))

    def usable(self, kind: str, p: int) -> bool:
        """Ours, caught up, and its lease surely not expired by our own clock."""
        part = (kind, p)
        return part in self.ready and time.monotonic() < self._valid_until.get(part, 0.0)

    def owner_address(self, kind: str, p: int) -> str | None:
        """The gRPC address of the partition's owner as last read (None: unknown or us)."""
        h = self.holders[kind][p]
        if h is None or h.rsplit(":", 1)[0] == self.id:
            return None
        return self._address_of(h)

    def _address_of(self, holder: str | None) -> str | None:
        if holder is None:
            return None
        rid = holder.rsplit(":", 1)[0]
        return self.address if rid == self.id else self.addresses.get(rid)

    # ------------------------------------------------------------------ life
    async def start(self, address: str) -> None:
        """Join, read every partition's outlooks, take a first share, then keep it up."""
        self.address = address
        if self.follower.carrier is not None and self.log is not None:
            self.follower.carrier.summaries = self.log.summaries
        try:
            self.live = await self.leases.heartbeat(self.lease_ms, address)
            for p in range(self.keys.workflow_partitions):
                await self.follower.catch_up(p)
            await self.tick()
        except ERRORS as exc:
            raise OSError(f"cluster {self.config.cluster_url}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.keep_alive, "renewal")),
            loop.create_task(self._every(self.manage, "tick")),
            loop.create_task(self._follow()),
        ]

    async def _every(self, step, what: str) -> None:
        """``step`` every ``period_s``, at a fixed rate: a slow round (a loaded loop) does not
        push the next one back, so renewals keep their pace while the lease lasts."""
        due = time.monotonic()
        while True:
            due += self.period_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due = max(due, time.monotonic() - self.period_s)  # skip rounds missed, not pile up
            try:
                await step()
            except (*ERRORS, OSError) as exc:
                log.warning("cluster %s failed: %s", what, exc)

    async def _follow(self) -> None:
        while True:
            try:
                await self.follower.step()
            except (*ERRORS, OSError) as exc:
                log.warning("cluster follower: %s", exc)
                await asyncio.sleep(self.period_s)

    async def tick(self) -> None:
        await self.keep_alive()
        await self.manage()

    async def keep_alive(self, bound_s: float | None = None) -> None:
        """Heartbeat and renew every held lease, all at once (their own task: the slower rest
        of a tick never delays them), each answer used as it comes; a renewal that raises or
        takes over ``bound_s`` (half a period) lets its lease lapse, and no round is longer."""
        sent, bound = time.monotonic(), bound_s or self.period_s / 2

        async def renew(part: Part, lease: Lease) -> None:
            ok = await asyncio.wait_for(self.leases.renew(lease, self.lease_ms), bound)
            if self.owned.get(part) is lease:  # (else handed over meanwhile)
                if ok:
                    self._valid_until[part] = sent + self.safe_s
                else:
                    self._lost(part)

        async def beat() -> None:
            self.live = await asyncio.wait_for(
                self.leases.heartbeat(self.lease_ms, self.address), bound
            )

        done = await asyncio.gather(
            beat(), *(renew(p, lease) for p, lease in self.owned.items()), return_exceptions=True
        )
        if failed := [r for r in done if isinstance(r, BaseException)]:
            raise failed[0]  # after every answer that came is used

    async def manage(self) -> None:
        """Read the owners, balance, publish this replica's stats."""
        await self.refresh()
        if not self.draining:
            await self._balance()
        await self._publish()

    async def refresh(self) -> None:
        """Read the owners and addresses again. Single flight: callers that arrive while a
        read is out share it (calls waiting for an owner must not open a connection each)."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.shield(task)

    async def _refresh(self) -> None:
        for kind in KINDS:
            self.holders[kind] = await self.leases.holders(kind)
        self.addresses = await self.leases.addresses()

    async def _balance(self) -> None:
        n = max(1, len(self.live))
        rank = self.live.index(self.id) if self.id in self.live else 0
        for kind in KINDS:
            count = self.keys.count(kind)
            target = math.ceil(count / n)
            mine = sorted(p for k, p in self.owned if k == kind)
            if len(mine) + len(self._taking) < target:
                free = [p for p, h in enumerate(self.holders[kind]) if h is None]
                start = rank * count // n  # replicas start looking at different places
                free.sort(key=lambda p: (p - start) % count)
                for p in free[: min(TAKE_PER_TICK, target - len(mine))]:
                    await self._take((kind, p))
            elif len(mine) > target:
                await self.give_up((kind, mine[-1]))

    async def _take(self, part: Part) -> None:
        if part in self.owned or part in self._taking:
            return
        kind, p = part
        sent = time.monotonic()
        lease = await self.leases.acquire(kind, p, self.lease_ms)
        if lease is None:
            return
        self._valid_until[part] = sent + self.safe_s
        self.owned[part] = lease
        self.holders[kind][p] = lease.holder
        self.counters["taken"] += 1
        if kind == ENGINE:
            self.ready.add(part)
            return
        self.follower.following.discard(p)
        self._taking.add(part)
        began = time.monotonic()
        try:
            # The tail's client: its reads may be long (the lease client times out in 1 s).
            starts, last, n = await rebuild(self._tail, self.follower, p)
        except (*ERRORS, OSError):
            self._taking.discard(part)
            self._lost(part)
            with contextlib.suppress(*ERRORS, OSError):  # free at once, not at expiry
                await self.leases.release(lease)
            raise
        self._taking.discard(part)
        if self.owned.get(part) is lease:
            if self.log is not None:
                self.log.adopt(p, starts, last)
            self.ready.add(part)
            took = time.monotonic() - began
            self.counters["rebuilt_events"] += n
            self.counters["rebuild_max_s"] = round(max(self.counters["rebuild_max_s"], took), 3)
            log.info("took workflow partition %d: %d events in %.3f s", p, n, took)

    def _lost(self, part: Part) -> None:
        """A lease that is not ours any more (expired, or fenced): stop using it at once."""
        lease = self.owned.pop(part, None)
        self.ready.discard(part)
        self.counters["lost"] += 1
        kind, p = part
        log.warning("lost the lease of %s partition %d (%s)", kind, p, lease and lease.holder)
        if kind == ENGINE:
            self.on_engines_lost({p})
        else:
            if self.log is not None:
                self.log.forget(p)
            self.follower.resync(p)  # what we applied may be ahead of what was written

    async def give_up(self, part: Part) -> None:
        """Hand a partition over: no new writes, flush what is queued, note how far the log
        is, release the lease (others may take it at once)."""
        lease = self.owned.get(part)
        if lease is None:
            return
        kind, p = part
        self.ready.discard(part)
        if kind == WORKFLOW:
            if self.wait_flushed is not None:
                await asyncio.wait_for(self.wait_flushed(), self.config.grace_s + 1)
            if self.log is not None:
                self.log.forget(p)
            last = await self._redis.xrevrange(self.keys.stream(p), count=1)
            if last:
                self.follower.passed(p, int(last[0][0].decode().split("-")[0]))
            self.follower.following.add(p)
            if not self.follower.outlooks:  # no engine here: nothing reads its workflows
                self.follower.forget(p)
        else:
            self.on_engines_lost({p})
        self.owned.pop(part, None)
        await self.leases.release(lease)
        self.counters["released"] += 1

    async def drain(self) -> None:
        """SIGTERM: hand every partition over, leave the membership, stop."""
        self.draining = True
        for part in sorted(self.owned, key=lambda x: x[0] == WORKFLOW):  # engines first
            try:
                await self.give_up(part)
            except (*ERRORS, OSError, TimeoutError) as exc:
                log.warning("drain: %s partition %d not released: %s", *part, exc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.leases.leave()
            await self._redis.hdel(self.keys.meta("stats"), self.id)
        except ERRORS as exc:
            log.warning("drain: leaving the cluster failed: %s", exc)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._tail.aclose()

    def wrap_predictor(self, predictor):
        """A reloaded model, as this replica's manager must hold it (see ``follower``)."""
        carrier = self.follower.carrier
        if carrier is None:
            carrier = self.follower.carrier = CarriedPredictor(predictor)
            carrier.summaries = self.log.summaries if self.log is not None else None
        carrier.inner = predictor
        return carrier

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        owned = {k: sorted(p for kk, p in self.ready if kk == k) for k in KINDS}
        return {
            "replica": self.id,
            "address": self.address,
            "at_s": time.time(),
            "live_replicas": len(self.live),
            "workflow_partitions": owned[WORKFLOW],
            # Every workflow partition's owner address as last read (clients route by it).
            "workflow_owners": [self._address_of(h) for h in self.holders[WORKFLOW]],
            "engine_partitions": owned[ENGINE],
            "applied": list(self.follower.applied),
            "follows": "outlook" if self.follower.outlooks else "finished",
            **self.counters,
            **self.follower.counters,
            **self.follower.delay_stats(),
            "replicas": list(self.peers),  # every live replica's summary, as of the last tick
        }

    async def _publish(self) -> None:
        """Put this replica's summary in the stats hash; read every live replica's back."""
        out = self.stats()
        del out["replicas"]
        if self._stats is not None:
            service = self._stats()
            out["hits"] = engine_hits(service)
            out["engines"] = len(service.get("service", {}).get("engines", []))
        key = self.keys.meta("stats")
        await self._redis.hset(key, self.id, json.dumps(out, default=str))
        await self._redis.expire(key, STATS_TTL_S)
        raw = await self._redis.hgetall(key)
        peers = []
        for rid, text in sorted(raw.items()):
            if rid.decode() not in self.live:
                continue
            st = json.loads(text)
            peers.append(
                {
                    "replica": rid.decode(),
                    "address": st.get("address"),
                    "workflow_partitions": len(st.get("workflow_partitions", [])),
                    "engine_partitions": len(st.get("engine_partitions", [])),
                    "engines": st.get("engines", 0),
                    **(st.get("hits") or engine_hits({})),
                    "outlook_delay_p50_ms": st.get("outlook_delay_p50_ms"),
                    "outlook_delay_p99_ms": st.get("outlook_delay_p99_ms"),
                    "outlook_propagation_p99_ms": st.get("outlook_propagation_p99_ms"),
                }
            )
        self.peers = peers
