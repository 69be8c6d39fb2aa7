"""Following other replicas' workflow partitions through their outlook streams.

An engine's plan needs the outlooks of every workflow that uses its blocks, and those
workflows may be owned by other replicas. Each event's work is done once, by its workflow's
owner; the owner writes a compact outlook record per event (``outlook``) and every replica
tails the outlook streams of the partitions it does not own, applying each record cheaply:
a remote workflow is started, its running steps and the owner's forecast are set
(``CacheManager.carried_step``: no state, no prediction), it ends, and a finished record's
rounds teach this replica's predictor (``observe_finished``) as one service's would. ``delay``
measures what this adds: the owner accepting an event to this replica applying its record.

Only a replica with an engine attached plans, so only such a replica reads the outlook
streams (``outlooks`` true). One without engines reads the partitions' finished streams alone
(the ``"x"`` records: one per workflow) to learn; when its first engine attaches it drops what
it held of the followed partitions and reads their outlook streams afresh from each one's
rebuild base, and when its last engine goes it drops them again.

Per partition ``applied[p]`` is the last sequence number whose record this replica read;
records at or below it are never applied again, and a partition this replica owns is not
followed (it applies its events live). A partition taken over is rebuilt in full from its
event log (``rebuild``); one read afresh (``fresh``: a resync, an engine's first attach)
starts at its rebuild base. A read that returns fewer than ``TAIL_FULL`` records is followed
by a ``TAIL_PAUSE_S`` pause, so one read carries many records; under load reads gather that
many by themselves and go on at once (the delay this adds is in ``delay_stats``).
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
from pbkv.service.cluster.outlook import OutlookRecord, decode_outlooks, finished_state, summary
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

READ_COUNT = 1_000  # entries per XREAD
BLOCK_MS = 500  # XREAD waits at most this long for new entries
POLL_S = 0.02  # on a Redis Cluster: the pause between rounds of per-partition XREADs
DELAY_WINDOW = 4_096  # outlook delays kept for percentiles
TAIL_PAUSE_S = 0.01  # after a read that returned a few records: let the next gather more
TAIL_FULL = 64  # records of a read that needs no pause (under load, reads gather by themselves)
FINISHED_PAUSE_S = 0.05  # the same without engines (finished records only: learning)


class CarriedPredictor(Predictor):
    """The replica's predictor: inside ``carrying(forecast)`` (replaying its log) it answers
    that forecast (the owner's) instead of predicting and learns nothing; otherwise it is
    ``inner``. A workflow that finishes at its owner teaches ``inner`` there and leaves its
    ``summary`` in ``summaries`` for the log to carry to every other replica (``learn``)."""

    name = "carried"

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self._carry: Forecast | None = None
        self._mirroring = False
        self.summaries = None  # the log's ``outlook.Summaries`` (set by the replica)

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
        if self._mirroring:
            return  # a replayed or remote end: learnt from its finished record
        self.inner.observe_finished(state)
        if self.summaries is not None:
            self.summaries.put(state.workflow_id, summary(state))

    def learn(self, state: WorkflowState) -> None:
        """A workflow another replica owned finished (its outlook record's rounds)."""
        self.inner.observe_finished(state)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class SeenEvents:
    """Event ids recently applied (``x-pbkv-event-id``), with their sequence number (or the
    commit future while the owner's write is in flight), forecast and, until it is written,
    the event record (a resend may have to write it again); the last ``cap``."""

    def __init__(self, cap: int = 100_000) -> None:
        self.cap = cap
        self._seen: collections.OrderedDict[str, tuple[object, Forecast | None, object]] = (
            collections.OrderedDict()
        )

    def remember(self, event_id: str, seq, forecast: Forecast | None, record=None) -> None:
        self._seen[event_id] = (seq, forecast, record)
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.cap:
            self._seen.popitem(last=False)

    def lookup(self, event_id: str) -> tuple[object, Forecast | None, object] | None:
        return self._seen.get(event_id)

    def forget(self, event_id: str) -> None:
        self._seen.pop(event_id, None)


class Follower:
    """Applies the outlook streams of the partitions in ``following`` to ``manager`` as they
    grow. ``carrier`` is the manager's ``CarriedPredictor`` (None: the replica has no model)."""

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
        n = keys.workflow_partitions
        self.applied = [0] * n
        self.learned = [0] * n  # finished records learnt from (never again after a resync)
        self.following: set[int] = set(range(n))
        self.fresh: set[int] = set(range(n))  # read from the rebuild base, not ``applied``
        self.outlooks = False  # reading outlook streams (an engine is attached), or finished
        self._catching: dict[int, asyncio.Future] = {}
        self.seen = SeenEvents()
        # Accepted at the owner -> applied here, and written in Redis -> applied here.
        self.delays_s: collections.deque[float] = collections.deque(maxlen=DELAY_WINDOW)
        self.propagation_s: collections.deque[float] = collections.deque(maxlen=DELAY_WINDOW)
        self.counters = {
            "outlook_records": 0,
            "outlook_skipped": 0,
            "resyncs": 0,
            "learned": 0,
            "apply_cpu_s": 0.0,  # CPU of applying tailed records (decoding included)
            "reads": 0,  # tail reads (XREAD rounds) and the time spent waiting for them
            "read_wait_s": 0.0,
        }
        self._errors = ThrottledLog(log, "pbkv cluster outlooks")

    def apply(self, r: OutlookRecord, *, live: bool) -> None:
        p = r.partition
        if r.seq <= self.applied[p]:
            return  # applied before (own write, or read twice)
        m, w = self.manager, r.workflow
        try:
            match r.kind:
                case "s":
                    if not (m.has_workflow(w) or m.has_ended(w)):
                        tenant = w.split("/", 1)[0]
                        app, task, now_s = r.args
                        m.start_workflow(w, app, tenant=tenant, task=task, now_s=now_s)
                case "+":
                    m.carried_step(w, r.args[0], started=True, parallel_group=r.args[1])
                case "-":
                    m.carried_step(w, r.args[0], started=False, forecast=r.forecast)
                case "x":
                    self._ended(r)
            self.counters["outlook_records"] += 1
        except cm_errors.UnknownWorkflow:
            self.counters["outlook_skipped"] += 1  # started before the base this read began at
        except cm_errors.CacheManagerError as exc:
            self.counters["outlook_skipped"] += 1
            self._errors.failed(f"partition {p} seq {r.seq}", exc)
        self.applied[p] = r.seq
        if live:
            now = self._wall()
            self.delays_s.append(max(0.0, now - r.at_s))
            if r.written_s is not None:
                self.propagation_s.append(max(0.0, now - r.written_s))

    def _ended(self, r: OutlookRecord) -> None:
        m, w, p = self.manager, r.workflow, r.partition
        app, task, rounds = r.args
        if self.carrier is not None and rounds is not None and r.seq > self.learned[p]:
            self.carrier.learn(finished_state(w, app, task, rounds))
            self.counters["learned"] += 1
        self.learned[p] = max(self.learned[p], r.seq)
        if not m.has_workflow(w):
            m.remember_ended((w,))
            return
        carry = self.carrier.carrying(None) if self.carrier else contextlib.nullcontext()
        with carry:  # no learning from the remote state (it has no steps)
            m.end_workflow(w)

    def passed(self, p: int, seq: int) -> None:
        """Partition ``p``'s log up to ``seq`` is held here already (a rebuild applied it, or
        this replica wrote it as the owner): its records there are neither applied nor
        learnt from again."""
        self.applied[p] = max(self.applied[p], seq)
        self.learned[p] = max(self.learned[p], seq)

    def switch(self) -> None:
        """Read outlook streams while an engine is attached here, finished streams else."""
        want = bool(self.manager.engine_ids())
        if want == self.outlooks:
            return
        self.outlooks = want
        for p in self.following:
            self.forget(p)
            self.applied[p] = 0
            self.fresh.add(p)
        log.info("following %s streams", "outlook" if want else "finished")

    def _stream(self, p: int) -> str:
        return self.keys.outlook(p) if self.outlooks else self.keys.finished(p)

    async def catch_up(self, p: int) -> int:
        """Apply partition ``p``'s records after ``applied[p]`` (or, reading outlooks, from
        its rebuild base if ``fresh``) up to the stream's current end (at start, at a sync
        barrier, before an engine request naming an unknown workflow). Returns how many.
        Single flight per partition: a caller arriving while one is out waits for it and
        then reads what came since (one connection per partition, however many wait)."""
        while (out := self._catching.get(p)) is not None and not out.done():
            await asyncio.shield(out)
        task = self._catching[p] = asyncio.ensure_future(self._catch_up(p))
        return await asyncio.shield(task)

    async def _catch_up(self, p: int) -> int:
        if p in self.fresh:
            if self.outlooks:
                base = int(await self._redis.get(self.keys.base(p)) or 0)
                self.applied[p] = max(self.applied[p], base - 1)
            self.fresh.discard(p)
        key = self._stream(p)
        n = 0
        while True:
            start = f"({self.applied[p]}-0" if self.applied[p] else "-"
            chunk = await self._redis.xrange(key, start, "+", count=READ_COUNT)
            if p not in self.following:
                return n  # taken over meanwhile: its owner applies it live
            for entry_id, fields in chunk:
                for r in decode_outlooks(p, entry_id, fields):
                    self.apply(r, live=False)
                    n += 1
            if len(chunk) < READ_COUNT:
                return n

    async def before_request(self, event) -> None:
        """An engine's request names a workflow this replica has not seen start: its owner
        acknowledged the start before the engine could send this, so read that partition up
        to its end first (engine events stay in order after the workflow events they follow).
        Costs nothing while the outlooks are current."""
        self.switch()
        wid = getattr(event, "workflow_id", None)
        if wid is None or self.manager.has_workflow(wid) or self.manager.has_ended(wid):
            return
        tenant, _, workflow_id = wid.partition("/")
        p = self.keys.workflow_partition(tenant, workflow_id)
        if p in self.following:
            await self.catch_up(p)

    async def catch_up_all(self) -> int:
        """Every followed partition up to its current end (an engine's sync barrier)."""
        self.switch()
        n = 0
        for p in sorted(self.following):
            n += await self.catch_up(p)
        return n

    def forget(self, p: int) -> int:
        """Drop what this manager holds of partition ``p``'s workflows (running and ended)."""
        k = self.keys
        return self.manager.forget_workflows(
            lambda wid: k.workflow_partition(*wid.split("/", 1)) == p
        )

    def resync(self, p: int) -> None:
        """Forget partition ``p`` (this replica may hold events its log never got: a write
        refused by fencing) and follow it again from its rebuild base."""
        dropped = self.forget(p)
        self.applied[p] = 0
        self.fresh.add(p)
        self.following.add(p)
        self.counters["resyncs"] += 1
        log.warning("partition %d: resync from its log (%d running workflows dropped)", p, dropped)

    async def step(self) -> int:
        """One blocking XREAD over the followed outlook streams (on a Redis Cluster one per
        partition, ``clients.xread_each``); returns records applied."""
        self.switch()
        for p in sorted(self.fresh & self.following):
            await self.catch_up(p)
        outlooks = self.outlooks
        streams = {self._stream(p): f"{self.applied[p]}-0" for p in sorted(self.following)}
        if not streams:  # every partition is ours: nothing to follow for now
            await asyncio.sleep(BLOCK_MS / 1000)
            return 0
        asked = time.monotonic()
        reply = await xread_each(self._redis, streams, READ_COUNT, BLOCK_MS, POLL_S)
        self.counters["reads"] += 1
        self.counters["read_wait_s"] += time.monotonic() - asked
        if outlooks != self.outlooks:
            return 0  # switched while the read was out: read the other streams afresh
        n, began = 0, time.process_time()
        for key, entries in reply:
            name = key.decode() if isinstance(key, bytes) else key
            p = int(name.split("{p", 1)[1].split("}", 1)[0])
            if p not in self.following or p in self.fresh:
                continue  # taken over (applied live now) or resynced while the read was out
            for entry_id, fields in entries:
                for r in decode_outlooks(p, entry_id, fields):
                    self.apply(r, live=True)
                    n += 1
        if n:
            self.counters["apply_cpu_s"] += time.process_time() - began
            if not outlooks:
                await asyncio.sleep(FINISHED_PAUSE_S)
            elif n < TAIL_FULL:
                await asyncio.sleep(TAIL_PAUSE_S)
        return n

    def delay_stats(self) -> dict[str, float | int | None]:
        """Percentiles (ms) of the last ``DELAY_WINDOW`` records' delays: ``outlook_delay``
        from the owner accepting the event, ``outlook_propagation`` from Redis writing it."""
        out: dict[str, float | int | None] = {"outlook_delay_n": len(self.delays_s)}
        for name, window in (("delay", self.delays_s), ("propagation", self.propagation_s)):
            d = sorted(window)
            for q in (50, 99):
                at = min(len(d) - 1, len(d) * q // 100)
                out[f"outlook_{name}_p{q}_ms"] = round(d[at] * 1000, 2) if d else None
        return out
