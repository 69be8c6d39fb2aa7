"""The shadow replay: a stock engine's observed block accesses, run against two simulated GPU
pools of its size -- one evicting by LRU (what the stock engine does), one following pbkv's
plans -- to estimate what pbkv would have saved.

What it is computed from (``docs/deploy.md``, "Shadow mode", says the same for users)::

    KV events (one batch per engine step)          orchestrator calls (Session API)
      BlockStored(hashes, parent, session_id)        start / step / end workflow
      BlockRemoved, AllBlocksCleared                     |
            |                                            v
            +--> accesses --> LRU pool (calibration)   CacheManager (shadow engine attached)
                          '-> plan pool <-- plan() ------'   ^ block + request events of the
                                                             '--- plan pool (what pbkv's engine
                                                                  would hold)

* The stock engine's computed blocks are those its ``BlockStored`` events report while it
  does not hold them (a reuse report names blocks it holds).
* An access is one request's prompt as far as the events show it: a ``BlockStored`` with
  parent ``P`` means a request held the chain from the root to ``P`` (a prefix hit; the parent
  map below remembers every block seen, resident or not) and computed the event's blocks.
  Consecutive events of one batch with the same ``session_id`` whose chains extend each other
  are one access (vLLM's ``kv_cache_report_mode="full"`` reuse report, then the computed rest).
  A request whose whole prompt hits and that fills no new block publishes nothing unless it
  asked for ``kv_cache_report_mode="full"``: such requests are invisible to the shadow.
* With ``report_mode="full"`` (the requests asked vLLM for ``kv_cache_report_mode="full"``) a
  request with a hit prefix always opens with that report (parent ``None``), so a stored event
  with a parent that no report opened in its batch continues a running request (a decode block,
  a prefill chunk): its parent chain is held, not looked up again. In ``"incremental"`` mode
  every stored event is an access, and a continuation counts its held blocks as hits.
* ``session_id`` ``"<workflow>#<agent>"`` (set by the client per request) tags the access for
  the manager; other or missing ids make it anonymous.
* The plan pool follows one plan per batch (engine step), the one the manager made from the
  earlier batches, as the connector takes one plan per step at its first lookup, before the
  step's blocks are reported (``PlanApplier.refresh_plan``).
* vLLM re-emits a waiting request's reuse report at every scheduling attempt, also one that
  finds no room: a lone report (nothing computed) waits one batch and is dropped if its
  session reports again then, or taken back later (``_replace_failed_attempt``).
* Both pools take an access at once (pin the hit prefix, evict for the rest and for the
  prompt's partial last block, which takes a slot but is never cached, store it) and hold
  its blocks until the orchestrator reports the request's step finished (``holds``), then
  release them tail first, as vLLM does. The LRU pool's computed blocks against the blocks
  the engine really stored (``calibration_error``) measure what this and every other
  simplification costs.
* Savings are blocks the LRU pool computes and the plan pool does not, in tokens and, through
  the simulator's cost model (``CostModel.prefill_s``, per access: new tokens after the hit
  context), in prefill seconds.

Only GPU-medium events count (an offloading connector's CPU events are counted and skipped).
Bounded: the parent map forgets the oldest blocks beyond ``max_known_blocks``; every access is
at most ``max_blocks_per_access`` blocks (a longer chain is cut at its head and counted).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace

from pbkv.cache_manager.errors import CacheManagerError
from pbkv.cache_manager.events import RequestFinished, RequestStarted
from pbkv.engine_adapter.shadow.counts import COUNTED, Access, PoolFigures, ShadowCounts
from pbkv.engine_adapter.shadow.holds import Hold, finished, steps_done
from pbkv.engine_adapter.shadow.wire import (
    MEDIUM_GPU,
    Cleared,
    DecodedBatch,
    RemovedBlocks,
    StoredBlocks,
)
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.gpu_pool import GpuBlockPool
from pbkv.engine_adapter.sim.plan_view import PlanView, follow

SESSION_SEPARATOR = "#"
REPORT_MODES = ("incremental", "full")  # vLLM's kv_cache_report_mode of the requests


def session_tag(workflow_id: str, agent: str) -> str:
    """The ``session_id`` a client sets on a request so the shadow knows whose it is."""
    return f"{workflow_id}{SESSION_SEPARATOR}{agent}"


def parse_session(session_id: str | None) -> tuple[str | None, str | None]:
    if not session_id or SESSION_SEPARATOR not in session_id:
        return None, None
    workflow, agent = session_id.rsplit(SESSION_SEPARATOR, 1)
    return (workflow or None), (agent or None)


class ShadowReplay:
    """Feeds decoded batches to the two pools and the manager's shadow engine. Not
    thread-safe: call it from the thread that owns the manager."""

    def __init__(
        self,
        manager,
        engine_id: str,
        *,
        gpu_blocks: int,
        tokens_per_block: int,
        cost: CostModel,
        clock: Callable[[], float],
        max_known_blocks: int | None = None,
        max_blocks_per_access: int = 16_384,
        report_mode: str = "full",
        max_hold_batches: int = 10_000,
    ) -> None:
        if report_mode not in REPORT_MODES:
            raise ValueError(f"report_mode must be one of {REPORT_MODES}, got {report_mode!r}")
        self.full_reports = report_mode == "full"
        if gpu_blocks <= 0 or tokens_per_block <= 0:
            raise ValueError("gpu_blocks and tokens_per_block must be positive")
        self.manager = manager
        self.engine_id = engine_id
        self.tokens_per_block = tokens_per_block
        self.cost = cost
        self._clock = clock
        self.max_known_blocks = max_known_blocks or 8 * gpu_blocks
        self.max_blocks_per_access = max_blocks_per_access
        self.max_hold_batches = max_hold_batches
        self.max_holds = gpu_blocks  # a running request holds at least one block
        manager.attach_engine(
            engine_id,
            gpu_blocks=gpu_blocks,
            cpu_blocks=0,
            tokens_per_block=tokens_per_block,
            shadow=True,
        )
        kw = {"tokens_per_block": tokens_per_block, "engine_id": engine_id}
        self.lru = GpuBlockPool(gpu_blocks, emit=lambda _e: None, **kw)
        self.plan = GpuBlockPool(gpu_blocks, emit=self._to_manager, **kw)
        self.counts = ShadowCounts()
        self._parents: OrderedDict[bytes, bytes | None] = OrderedDict()
        self._resident: dict[bytes, None] = {}  # on the stock engine's GPU, as last reported
        self._view: PlanView | None = None
        self._requests = 0
        self._holds: list[Hold] = []  # running requests, oldest first
        # Lone reports of the last batch, with their workflow's finished steps then: applied
        # at the next batch unless their session reports again (``on_batch``).
        self._pending: list[tuple[Access, int | None]] = []

    # ------------------------------------------------------------------ input
    def on_batch(self, batch: DecodedBatch) -> None:
        c = self.counts
        c.batches += 1
        self.release_finished()
        # One plan per engine step, made from the earlier steps (module docstring).
        self._view = follow(self._view, self.manager.plan(self.engine_id), self._clock(), None)
        accesses = self.accesses(batch.events)
        again = {a.session_id for a in accesses if not a.held}
        pending, self._pending = self._pending, []
        for access, done in pending:
            if access.session_id in again:
                c.retried_reports += 1
            else:
                self._access(access, done)
        for access in accesses:
            workflow, _agent = parse_session(access.session_id)
            done = steps_done(self.manager, workflow)
            if (
                self.full_reports
                and not access.held
                and not access.observed_new
                and done is not None
            ):
                self._pending.append((access, done))
            else:
                self._access(access, done)

    def accesses(self, events: Iterable[object]) -> list[Access]:
        """Learn the batch's blocks and turn its stored events into accesses (see the module
        docstring); removals and clears only update the tallies and the pools' clear."""
        c = self.counts
        out: list[Access] = []
        for ev in events:
            match ev:
                case StoredBlocks() if ev.medium == MEDIUM_GPU:
                    if ev.block_size != self.tokens_per_block:
                        raise ValueError(
                            f"BlockStored block_size {ev.block_size} differs from the shadow's "
                            f"tokens_per_block {self.tokens_per_block}"
                        )
                    # A block the engine holds already is a reuse report, not a computation.
                    new = sum(h not in self._resident for h in ev.hashes)
                    c.observed_stored_blocks += new
                    self._resident.update(dict.fromkeys(ev.hashes))
                    chain = self._chain(ev.parent) + ev.hashes
                    self._learn(ev.hashes, ev.parent)
                    if len(chain) > self.max_blocks_per_access:
                        chain = chain[-self.max_blocks_per_access :]
                        c.truncated_accesses += 1
                    prev = out[-1] if out else None
                    if (
                        prev is not None
                        and prev.session_id == ev.session_id
                        and chain[: len(prev.chain)] == prev.chain
                    ):
                        out[-1] = Access(chain, ev.session_id, prev.held, prev.observed_new + new)
                    else:
                        held = len(chain) - len(ev.hashes) if self.full_reports else 0
                        out.append(Access(chain, ev.session_id, max(0, held), new))
                case RemovedBlocks() if ev.medium == MEDIUM_GPU:
                    c.observed_removed_blocks += len(ev.hashes)
                    for h in ev.hashes:
                        self._resident.pop(h, None)
                case Cleared():
                    c.clears += 1
                    self._resident.clear()
                    self._clear()
                case _:
                    c.other_medium_events += 1
        return out

    # ------------------------------------------------------------------ estimate
    def estimate(self) -> dict[str, object]:
        """The figures the dashboard shows (``shadow`` in the stats dict)."""
        c = self.counts
        tpb = self.tokens_per_block
        saved_blocks = c.lru.computed_blocks - c.plan.computed_blocks
        observed = c.observed_stored_blocks
        return {
            "engine_id": self.engine_id,
            "batches": c.batches,
            "accesses": c.accesses,
            "observed_computed_blocks": observed,
            "lru_computed_blocks": c.lru.computed_blocks,
            "pbkv_computed_blocks": c.plan.computed_blocks,
            "lookup_blocks": c.lru.lookup_blocks,
            "lru_hit_rate": c.lru.hit_rate,
            "pbkv_hit_rate": c.plan.hit_rate,
            "saved_tokens": saved_blocks * tpb,
            "saved_prefill_s": c.lru.prefill_s - c.plan.prefill_s,
            "lru_prefill_s": c.lru.prefill_s,
            "calibration_error": (
                abs(c.lru.computed_blocks - observed) / observed if observed else None
            ),
            **{k: getattr(c, k) for k in COUNTED},
        }

    # ------------------------------------------------------------------ internals
    def _chain(self, parent: bytes | None) -> tuple[bytes, ...]:
        out: list[bytes] = []
        h = parent
        while h is not None and len(out) < self.max_blocks_per_access:
            if h not in self._parents:
                self.counts.orphan_parents += 1
                break
            out.append(h)
            h = self._parents[h]
        out.reverse()
        return tuple(out)

    def _learn(self, hashes: tuple[bytes, ...], parent: bytes | None) -> None:
        for h in hashes:
            self._parents[h] = parent
            self._parents.move_to_end(h)
            parent = h
        while len(self._parents) > self.max_known_blocks:
            self._parents.popitem(last=False)
        while len(self._resident) > self.max_known_blocks:  # removals lost in a gap
            del self._resident[next(iter(self._resident))]

    def _access(self, access: Access, done: int | None) -> None:
        """The access against both pools; the manager hears it as its shadow engine would
        report it: started (with the plan pool's prefix hits), blocks evicted and stored, and
        finished once the orchestrator says so (``holds``)."""
        self.counts.accesses += 1
        now = self._clock()
        if access.held:
            self.counts.continuations += 1
        elif access.observed_new == 0:
            self.counts.lone_reports += 1
        if not access.held:
            self._replace_failed_attempt(access, done)
        before = (replace(self.counts.lru), replace(self.counts.plan))
        lru = self._run(self.lru, None, access, self.counts.lru, now)
        workflow, agent = parse_session(access.session_id)
        known = workflow is not None and self._known(workflow)
        self._requests += 1
        rid = f"shadow-{self._requests}"
        started = self._to_manager(
            RequestStarted(
                self.engine_id,
                rid,
                access.chain,
                len(access.chain) * self.tokens_per_block,
                num_gpu_hit_blocks=prefix_hits(self.plan, access.chain),
                workflow_id=workflow if known else None,
                agent=agent,
                now_s=now,
            )
        )
        pool = self._run(self.plan, self._view, access, self.counts.plan, now)
        figures = (self.counts.lru.minus(before[0]), self.counts.plan.minus(before[1]))
        lone = not access.held and not access.observed_new
        hold = Hold(
            rid, workflow, agent, done or 0, self.counts.batches, lru, pool, started, lone, figures
        )
        self._holds.append(hold)
        if done is None or len(self._holds) > self.max_holds:
            self._release(self._holds.pop(0 if done is not None else -1))

    def _replace_failed_attempt(self, access: Access, done: int | None) -> None:
        """A session's new access while its request of the same step is held: vLLM looks a
        request up again only while it waits, so a held lone report was an attempt that found
        no room (retried later than the next batch when a step's budget stopped the scheduler
        first). It held nothing: released, its tallies taken back (``retried_reports``)."""
        workflow, agent = parse_session(access.session_id)
        if workflow is None or done is None:
            return
        for i, hold in enumerate(self._holds):
            if hold.workflow == workflow and hold.agent == agent and hold.steps_done == done:
                self.counts.repeat_accesses += 1
                if hold.lone:
                    self._release(self._holds.pop(i))
                    self.counts.lru.take_back(hold.figures[0])
                    self.counts.plan.take_back(hold.figures[1])
                    self.counts.retried_reports += 1
                return

    def release_finished(self) -> None:
        """Let the requests the orchestrator reported finished go (every batch does first)."""
        batch = self.counts.batches
        keep = []
        for hold in self._holds:
            if finished(self.manager, hold, batch, self.max_hold_batches):
                self._release(hold)
            else:
                keep.append(hold)
        self._holds = keep

    def _release(self, hold: Hold) -> None:
        self.lru.release(*hold.lru)
        self.plan.release(*hold.plan)
        if hold.started:
            self._to_manager(RequestFinished(self.engine_id, hold.rid, now_s=self._clock()))

    def _known(self, workflow: str) -> bool:
        return self.manager.has_workflow(workflow) or self.manager.has_ended(workflow)

    def _run(
        self,
        pool: GpuBlockPool,
        view: PlanView | None,
        access: Access,
        fig: PoolFigures,
        now: float,
    ) -> tuple[tuple[bytes, ...], int]:
        """One access against ``pool``: pin the hit prefix, evict for the rest, store it;
        returns what it holds (blocks, uncached slots) until released. Blocks of a running
        request the pool lost meanwhile (an untagged request is not held) are stored again but
        not counted: the engine did not compute them."""
        chain, held = access.chain, access.held
        hits = prefix_hits(pool, chain)
        for h in chain[:hits]:
            pool.pin(h)
        need = len(chain) - hits
        # A new request also holds its prompt's partial last block (uncached, not hashed).
        tail = 0 if held else 1
        short = need + tail - pool.free_slots()
        if short > 0:
            pool.evict(pool.victims(short, view), lambda _h, _p: None)
        room = min(need, pool.free_slots())
        tail = min(tail, pool.free_slots() - room)
        pool.reserve(room + tail)
        stored = pool.cache_computed(chain, hits, hits + room, now)
        tpb = self.tokens_per_block
        computed = need - max(0, held - hits)
        fig.lookup_blocks += len(chain) - held
        fig.hit_blocks += max(0, hits - held)
        fig.computed_blocks += computed
        fig.prefill_s += self.cost.prefill_s(computed * tpb, (len(chain) - computed) * tpb)
        return chain[:hits] + tuple(stored), room + tail - len(stored)

    def _clear(self) -> None:
        """vLLM clears its cache only with no request running: every hold ends first."""
        for hold in self._holds:
            self._release(hold)
        self._holds = []
        self._pending = []  # lone reports of requests the clear ended
        for pool in (self.lru, self.plan):
            pool.evict(pool.evictable(), lambda _h, _p: None)

    def _to_manager(self, event) -> bool:
        """Pass ``event`` on; one the manager rejects (e.g. a directory bound) is counted."""
        try:
            self.manager.on_engine_event(event)
        except CacheManagerError:
            self.counts.manager_errors += 1
            return False
        return True


def prefix_hits(pool: GpuBlockPool, chain: tuple[bytes, ...]) -> int:
    """How many of ``chain``'s first blocks ``pool`` holds (vLLM's longest prefix hit)."""
    hits = 0
    while hits < len(chain) and chain[hits] in pool:
        hits += 1
    return hits
