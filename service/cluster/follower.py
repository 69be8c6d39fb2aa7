"""Mirroring other replicas' workflow partitions into this replica's manager.

An engine's plan needs the outlooks of every workflow that uses its blocks, and those
workflows may be owned by other replicas. Their owners store each event with the forecast it
produced (``log``); every replica tails the streams of the partitions it does not own and
applies the events to its own manager, the forecast carried in place of a prediction
(``CarriedPredictor``), so the predictor runs once per event, at the owner. ``delay`` measures
what this adds: the time from the owner accepting an event to a mirror applying it.

Per partition ``applied[p]`` is the last sequence number this replica's manager holds
(own writes included); entries at or below it are never applied again, and a partition this
replica owns is never applied from the stream (its owner applied it live).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import redis.asyncio as aioredis

from pbkv.cache_manager import errors as cm_errors
from pbkv.predictor.forecast import DEFAULT_HORIZON, Forecast, Predictor, WorkflowState
from pbkv.service.cluster.clients import xread_each
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.cluster.log import LoggedEvent, decode_entry
from pbkv.service.servicers.orchestrator import apply_event
from pbkv.service.servicers.wiring import WorkflowKey
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

READ_COUNT = 1_000  # entries per XREAD
BLOCK_MS = 500  # XREAD waits at most this long for new entries
POLL_S = 0.02  # on a Redis Cluster: the pause between rounds of per-partition XREADs
DELAY_WINDOW = 4_096  # mirror delays kept for percentiles


class CarriedPredictor(Predictor):
    """The replica's predictor: inside ``carrying(forecast)`` it answers that forecast (the
    owner's) instead of predicting; otherwise it is ``inner``. It learns from every finished
    workflow, mirrored or owned, as one service's predictor would (``observe_finished``)."""

    name = "carried"

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self._carry: Forecast | None = None
        self._mirroring = False

    @contextlib.contextmanager
    def carrying(self, forecast: Forecast | None) -> Iterator[None]:
        self._carry, self._mirroring = forecast, True
        try:
            yield
        finally:
            self._carry, self._mirroring = None, False

    def next_distribution(self, state: WorkflowState) -> dict[str, float]:
        return self.inner.next_distribution(state)

    def forecast(self, state: WorkflowState, horizon: int = DEFAULT_HORIZON) -> Forecast:
        if self._mirroring and self._carry is not None:
            return self._carry
        return self.inner.forecast(state, horizon)

    def observe_finished(self, state: WorkflowState) -> None:
        self.inner.observe_finished(state)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class SeenEvents:
    """Event ids recently applied (``x-pbkv-event-id``), with their sequence number (or the
    commit future while the owner's write is in flight) and forecast; the last ``cap``."""

    def __init__(self, cap: int = 100_000) -> None:
        self.cap = cap
        self._seen: collections.OrderedDict[str, tuple[object, Forecast | None]] = (
            collections.OrderedDict()
        )

    def remember(self, event_id: str, seq, forecast: Forecast | None) -> None:
        self._seen[event_id] = (seq, forecast)
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.cap:
            self._seen.popitem(last=False)

    def lookup(self, event_id: str) -> tuple[object, Forecast | None] | None:
        return self._seen.get(event_id)

    def forget(self, event_id: str) -> None:
        self._seen.pop(event_id, None)


class Follower:
    """Applies the streams of the partitions in ``following`` to ``manager`` as they grow.
    ``carrier`` is the manager's ``CarriedPredictor`` (None: the replica has no model)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: ClusterKeys,
        manager,
        carrier: CarriedPredictor | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys, self.manager, self.carrier = keys, manager, carrier
        self._redis = client
        self._wall = wall_clock
        self.applied = [0] * keys.workflow_partitions
        self.following: set[int] = set(range(keys.workflow_partitions))
        self.seen = SeenEvents()
        self.delays_s: collections.deque[float] = collections.deque(maxlen=DELAY_WINDOW)
        self.counters = {"mirrored_events": 0, "mirror_errors": 0, "resyncs": 0}
        self._errors = ThrottledLog(log, "pbkv cluster mirror")

    def apply(self, logged: LoggedEvent, *, live: bool) -> None:
        r = logged.record
        p = logged.partition
        if r.seq <= self.applied[p]:
            return  # applied before (own write, or read twice)
        key = WorkflowKey(r.tenant, r.workflow_id)
        carry = self.carrier.carrying(logged.forecast) if self.carrier else contextlib.nullcontext()
        try:
            with carry:
                apply_event(self.manager, key, r.event)
            self.counters["mirrored_events"] += 1
            if r.event_id:
                self.seen.remember(r.event_id, r.seq, logged.forecast)
        except cm_errors.CacheManagerError as exc:
            self.counters["mirror_errors"] += 1
            self._errors.failed(f"partition {p} seq {r.seq}", exc)
        self.applied[p] = r.seq
        if live:
            self.delays_s.append(max(0.0, self._wall() - r.at_s))

    async def catch_up(self, p: int, *, taking: bool = False) -> int:
        """Apply partition ``p``'s entries after ``applied[p]`` up to its current end (at
        start, at a sync barrier, and ``taking`` it over). Returns how many were applied."""
        key = self.keys.stream(p)
        n = 0
        while True:
            start = f"({self.applied[p]}-0" if self.applied[p] else "-"
            chunk = await self._redis.xrange(key, start, "+", count=READ_COUNT)
            if not taking and p not in self.following:
                return n  # taken over meanwhile: its owner applies it live
            for entry_id, fields in chunk:
                self.apply(decode_entry(p, entry_id, fields), live=False)
                n += 1
            if len(chunk) < READ_COUNT:
                return n

    async def before_request(self, event) -> None:
        """An engine's request names a workflow this mirror has not seen start: its owner
        acknowledged the start before the engine could send this, so read that partition up
        to its end first (engine events stay in order after the workflow events they follow).
        Costs nothing while the mirror is current."""
        wid = getattr(event, "workflow_id", None)
        if wid is None or self.manager.has_workflow(wid) or self.manager.has_ended(wid):
            return
        tenant, _, workflow_id = wid.partition("/")
        p = self.keys.workflow_partition(tenant, workflow_id)
        if p in self.following:
            await self.catch_up(p)

    async def catch_up_all(self) -> int:
        """Every followed partition up to its current end (an engine's sync barrier)."""
        n = 0
        for p in sorted(self.following):
            n += await self.catch_up(p)
        return n

    def resync(self, p: int) -> None:
        """Forget what this manager holds of partition ``p`` (it may hold events its log never
        got: a write refused by fencing) and read the partition again from its start."""
        k = self.keys
        dropped = self.manager.forget_workflows(
            lambda wid: k.workflow_partition(*wid.split("/", 1)) == p
        )
        self.applied[p] = 0
        self.counters["resyncs"] += 1
        log.warning("partition %d: resync from its log (%d running workflows dropped)", p, dropped)

    async def step(self) -> int:
        """One blocking XREAD over the followed partitions (on a Redis Cluster one per partition,
        ``clients.xread_each``); returns entries applied."""
        streams = {self.keys.stream(p): f"{self.applied[p]}-0" for p in sorted(self.following)}
        if not streams:  # every partition is ours: nothing to follow for now
            await asyncio.sleep(BLOCK_MS / 1000)
            return 0
        reply = await xread_each(self._redis, streams, READ_COUNT, BLOCK_MS, POLL_S)
        n = 0
        for key, entries in reply:
            name = key.decode() if isinstance(key, bytes) else key
            p = int(name.split("{p", 1)[1].split("}", 1)[0])
            if p not in self.following:
                continue  # taken over while the read was in flight: applied live now
            for entry_id, fields in entries:
                self.apply(decode_entry(p, entry_id, fields), live=True)
                n += 1
        return n

    def delay_stats(self) -> dict[str, float | int | None]:
        d = sorted(self.delays_s)
        if not d:
            return {"mirror_delay_n": 0, "mirror_delay_p50_ms": None, "mirror_delay_p99_ms": None}
        return {
            "mirror_delay_n": len(d),
            "mirror_delay_p50_ms": round(d[len(d) // 2] * 1000, 2),
            "mirror_delay_p99_ms": round(d[min(len(d) - 1, int(len(d) * 0.99))] * 1000, 2),
        }
