"""Per-engine cache plans, kept up to date incrementally.

The planner holds every evictable GPU block and every CPU-only block of one engine in sorted
structures keyed by the policy's ``Rank``; a refresh re-ranks only the blocks marked dirty (their
tier, in-use state, consumers or consumers' forecasts changed) plus, for time-sensitive
policies, a bounded sweep of the longest-unranked ones. Building a plan then reads the ends of
those structures, so an update costs O(changed blocks * log n), not O(n).

The engine's eviction queue, which the plan describes (how engines read it:
``plan_order.py``)::

    first out                                                                  last out
    | ranked by (value, LRU): plan.evict_first | unnamed: LRU | ranked, beyond the plan |
    '-- offload: the first ``offload_window_blocks`` that deserve a CPU copy --'

``plan_max_blocks`` bounds what a plan names: the head of the ranked blocks; the engine evicts
every block the plan does not name by its own LRU, after them. ``prefetch``: CPU-only blocks
the policy wants, most valuable first, each taking a free GPU slot or displacing a queue-head
block worth less, within ``transfer_budget_blocks`` per plan. A new plan replaces the old one
whole, so a prefetch that is no longer wanted is cancelled. ``host_drop_first``: the
``host_plan_blocks`` CPU-only blocks of lowest ``Rank.host_value`` (``value`` when the policy
gives none), lowest first, for a policy that ``orders_host_tier`` (pbkv): the CPU tier drops
those copies before any other; CPU copies
of GPU blocks and every block of other policies are left to the tier's LRU.
``top_kept(n)`` reads the most
valuable ranked blocks on demand (the dashboard's list; plans do not carry it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from operator import itemgetter

from sortedcontainers import SortedList

from pbkv.cache_manager.block_directory import Block, BlockDirectory
from pbkv.cache_manager.checks import check_ints, check_numbers
from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.policies import BlockFacts, Policy, Rank
from pbkv.cache_manager.scorer import BlockScore

FactsFn = Callable[[Block, float], BlockFacts]
_HASH = itemgetter(-1)  # the block hash at the end of every sort key


TOP_KEPT_SCAN = 4_096  # ranked blocks one top_kept query may re-score at most


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """What one plan may name and move, and how much re-ranking a plan may do."""

    plan_max_blocks: int = 2_048  # blocks a plan names (evict_first + keep)
    offload_window_blocks: int = 2_048  # queue head examined for write-back
    transfer_budget_blocks: int = 256  # prefetches per plan
    rescore_budget: int = 32  # time-drifting ranks refreshed per plan
    rescore_after_s: float = 10.0  # ... once they are this old
    host_plan_blocks: int = 0  # pbkv's CPU-only blocks a plan names to drop first (0: LRU)
    # After a GPU eviction, a prefetch into a free slot must outrank a queue-head block this
    # long, as when no slot is free (``_prefetch_set``).
    evicting_window_s: float = 1.0  # free slots are transient this long after an eviction (0: off)

    def __post_init__(self) -> None:
        check_ints(
            self,
            {
                "plan_max_blocks": 0,
                "offload_window_blocks": 0,
                "transfer_budget_blocks": 0,
                "rescore_budget": 0,
                "host_plan_blocks": 0,
            },
        )
        check_numbers(self, ("rescore_after_s", "evicting_window_s"))


class Planner:
    def __init__(
        self, directory: BlockDirectory, policy: Policy, config: PlannerConfig | None = None
    ) -> None:
        config = config or PlannerConfig()
        self.directory = directory
        self.policy = policy
        self.plan_max_blocks = config.plan_max_blocks
        self.offload_window_blocks = config.offload_window_blocks
        self.transfer_budget_blocks = config.transfer_budget_blocks
        self.rescore_budget = config.rescore_budget
        self.rescore_after_s = config.rescore_after_s
        self.host_plan_blocks = config.host_plan_blocks
        self.evicting_window_s = config.evicting_window_s
        self.evicted_s = -math.inf  # when a refresh last saw the GPU evict
        self._gpu_removed = 0  # the directory's count of GPU removals at that refresh
        self.dirty: set[bytes] = set()
        self._ranked = SortedList()  # (value, last, -depth, hash): evictable, ranked
        self._ranked_key: dict[bytes, tuple] = {}
        self._unnamed = SortedList()  # (last_access, hash): evictable, unnamed
        self._unnamed_key: dict[bytes, tuple] = {}
        self._prefetch = SortedList()  # (-value, hash): CPU-only blocks the policy wants
        self._prefetch_key: dict[bytes, tuple] = {}
        self._host = SortedList()  # (host value, last, -depth, hash): ranked CPU-only
        self._host_key: dict[bytes, tuple] = {}
        # Ranked blocks -> Rank.offload. Only a bool (no object kept per rank): long-lived
        # per-block objects would pile up in the GC's young generation and make its pauses long.
        self._offload_ok: dict[bytes, bool] = {}
        self._facts: FactsFn | None = None
        self._now_s = 0.0
        self._scored_s: dict[bytes, float] = {}  # oldest-ranked first (for the sweep)
        self._seq = 0
        self._front_n = 0  # ranked blocks the current plan puts in evict_first
        self._plan: CachePlan | None = None
        self._fallback = False
        self.plans_built = 0
        self.last_reranked = 0  # blocks the last refresh re-ranked
        self.last_prefetch: frozenset[bytes] = frozenset()

    # ------------------------------------------------------------------ refresh
    def refresh(self, facts: FactsFn, now_s: float) -> int:
        """Re-rank dirty blocks (and a sweep); returns how many were re-ranked."""
        d = self.directory
        dirty = self.dirty
        if d.changed:
            dirty |= d.changed
            d.changed = set()
        if not self.policy.names_blocks and not self.policy.offload_unnamed:
            dirty.clear()  # plain LRU: nothing to rank
            return 0
        if self.policy.time_sensitive and self._scored_s:
            stale_before = now_s - self.rescore_after_s
            for h, t in islice(self._scored_s.items(), self.rescore_budget):
                if t > stale_before:
                    break
                dirty.add(h)
        if d.gpu_removed != self._gpu_removed:  # the GPU evicted: free slots are transient
            self._gpu_removed = d.gpu_removed
            self.evicted_s = now_s
        n = len(dirty)
        policy = self.policy
        self._facts = facts
        self._now_s = now_s
        for h in dirty:
            b = d.get(h)
            if b is None or not (b.evictable or (b.on_cpu and not b.on_gpu)):
                self._drop(h)
                continue
            rank = policy.rank(facts(b, now_s))
            if not self._unchanged(b, rank, now_s):
                self._drop(h)
                self._insert(b, rank, now_s)
        self.dirty = set()
        self.last_reranked = n
        return n

    def _unchanged(self, b: Block, rank: Rank | None, now_s: float) -> bool:
        """Same place in the same structure: only the stored rank is refreshed."""
        h = b.block_hash
        last = -math.inf if b.last_access_s is None else b.last_access_s
        if b.on_gpu:
            if rank is None:
                return self._unnamed_key.get(h) == (last, h)
            if self._ranked_key.get(h) != (rank.value, last, -b.depth, h):
                return False
        elif rank is None or not rank.prefetch or self._prefetch_key.get(h) != (-rank.value, h):
            return False
        host_key = _host_key(b, rank, last) if self._names_host(b, rank) else None
        if self._host_key.get(h) != host_key:
            return False
        self._offload_ok[h] = rank.offload
        self._scored_s.pop(h, None)
        self._scored_s[h] = now_s
        return True

    def _drop(self, h: bytes) -> None:
        key = self._ranked_key.pop(h, None)
        if key is not None:
            self._ranked.remove(key)
        key = self._unnamed_key.pop(h, None)
        if key is not None:
            self._unnamed.remove(key)
        key = self._prefetch_key.pop(h, None)
        if key is not None:
            self._prefetch.remove(key)
        key = self._host_key.pop(h, None)
        if key is not None:
            self._host.remove(key)
        self._offload_ok.pop(h, None)
        self._scored_s.pop(h, None)

    def _insert(self, b: Block, rank: Rank | None, now_s: float) -> None:
        h = b.block_hash
        self._scored_s[h] = now_s
        last = -math.inf if b.last_access_s is None else b.last_access_s
        if b.on_gpu:
            if rank is None:
                key = (last, h)
                self._unnamed.add(key)
                self._unnamed_key[h] = key
            else:
                # Ties (same value, same access) go deepest first: a prefix's tail before
                # its head, as vLLM frees blocks, so no head is evicted under a live tail.
                key = (rank.value, last, -b.depth, h)
                self._ranked.add(key)
                self._ranked_key[h] = key
                self._offload_ok[h] = rank.offload
        elif rank is not None and rank.prefetch:
            key = (-rank.value, h)
            self._prefetch.add(key)
            self._prefetch_key[h] = key
        if self._names_host(b, rank):
            key = _host_key(b, rank, last)
            self._host.add(key)
            self._host_key[h] = key

    # ------------------------------------------------------------------ plan
    def plan(self, engine_id: str, now_s: float, *, fallback: bool) -> CachePlan:
        """The current plan; the same object while nothing it says has changed."""
        if fallback:
            return self._emit(CachePlan(engine_id, 0, created_s=now_s, fallback_lru=True))
        if not self.policy.names_blocks and not self.policy.offload_unnamed:
            return self._emit(CachePlan(engine_id, 0, created_s=now_s))
        self._front_n = min(len(self._ranked), self.plan_max_blocks)
        evict_first = tuple(map(_HASH, self._ranked.islice(0, self._front_n)))
        plan = CachePlan(
            engine_id,
            0,
            evict_first=evict_first,
            offload=self._offload(),
            prefetch=self._prefetch_set(now_s),
            created_s=now_s,
            host_drop_first=self._host_drop_first(),
        )
        return self._emit(plan)

    def _emit(self, plan: CachePlan) -> CachePlan:
        old = self._plan
        if old is not None and _same(old, plan):
            return old
        self._seq += 1
        self.plans_built += 1
        plan = CachePlan(
            plan.engine_id,
            self._seq,
            plan.evict_first,
            plan.offload,
            plan.prefetch,
            plan.created_s,
            plan.fallback_lru,
            plan.host_drop_first,
        )
        self._plan = plan
        self.last_prefetch = frozenset(plan.prefetch)
        return plan

    def _queue_head(self) -> Iterator[tuple[bytes, float, bool]]:
        """Evictable blocks from the eviction end as the engine sees them: the plan's
        evict_first, then unnamed (LRU); as (hash, value, worth a CPU copy)."""
        ok = self._offload_ok
        head = ((k[-1], k[0], ok[k[-1]]) for k in self._ranked.islice(0, self._front_n))
        unnamed = ((k[-1], -math.inf, self.policy.offload_unnamed) for k in self._unnamed)
        return chain(head, unnamed)

    def _offload(self) -> tuple[bytes, ...]:
        d = self.directory
        if d.cpu_blocks == 0 or self.offload_window_blocks == 0:
            return ()
        # Blocks near the eviction end (not net of free slots: one admission can take many).
        window = self.offload_window_blocks
        ok = self._offload_ok
        tail = ((k[-1], k[0], ok[k[-1]]) for k in self._ranked.islice(self._front_n))
        out = []
        for h, _value, worth in islice(chain(self._queue_head(), tail), window):
            if worth and not d.get(h).on_cpu:
                out.append(h)
        return tuple(out)

    def _names_host(self, b: Block, rank: Rank | None) -> bool:
        """A CPU-only block the policy ranks, when it orders the host tier (a CPU copy of a
        GPU block is the GPU copy's insurance: left to the tier's LRU)."""
        return self.policy.orders_host_tier and rank is not None and b.on_cpu and not b.on_gpu

    def _host_drop_first(self) -> tuple[bytes, ...]:
        """The lowest-valued ranked blocks with a CPU copy, lowest first (LRU among equals):
        the CPU tier drops their copies before any other."""
        if self.directory.cpu_blocks == 0:
            return ()
        return tuple(map(_HASH, self._host.islice(0, self.host_plan_blocks)))

    def _prefetch_set(self, now_s: float) -> tuple[bytes, ...]:
        """CPU-only blocks to load, most valuable first. Each takes a free slot or displaces
        the next queue-head block worth less. While the GPU is evicting (within
        ``evicting_window_s`` of an eviction) a free slot is only transient -- the next
        admission takes it and then evicts from the queue head, where a prefetched block
        worth less than the head would be the first to go, unused -- so each prefetch must
        then outrank its own queue-head block even when it takes a free slot."""
        d = self.directory
        if not self._prefetch or self.transfer_budget_blocks == 0:
            return ()
        free = d.gpu_blocks - d.gpu_used
        window = self.evicting_window_s
        evicting = window > 0 and now_s - self.evicted_s <= window
        victims = self._queue_head()
        out: list[bytes] = []
        for neg_value, h in self._prefetch:
            if len(out) >= self.transfer_budget_blocks:
                break
            if free > 0 and not evicting:
                free -= 1
            else:
                victim = next(victims, None)
                if victim is None:  # nothing evictable left: only a free slot will do
                    if free <= 0:
                        break
                    free -= 1
                # A speculative prefetch never pushes out a block worth as much or more.
                elif not victim[1] < -neg_value:
                    break
                elif free > 0:
                    free -= 1  # into the free slot, with the victim evicted before it
            out.append(h)
        return tuple(out)

    def top_kept(self, n: int) -> tuple[BlockScore, ...]:
        """Up to ``n`` of the most valuable ranked blocks with their score components, as of
        the last refresh (a stats query: few blocks, re-scored on demand; nothing it does
        changes a plan). Only blocks a consumer keeps: a block ranked on recency alone shows
        no reuse probability worth displaying. Blocks of a workflow that ended since the last
        plan still rank high until the next one, and one request can hold hundreds of blocks:
        up to ``TOP_KEPT_SCAN`` ranked blocks are re-scored to find ``n`` live ones."""
        facts = self._facts
        if n == 0 or facts is None or self._plan is None or self._plan.fallback_lru:
            return ()
        out = []
        for key in islice(reversed(self._ranked), max(4 * n, TOP_KEPT_SCAN)):
            if len(out) >= n:
                break
            b = self.directory.get(key[-1])
            if b is None:
                continue
            rank = self.policy.rank(facts(b, self._now_s))
            score = rank.score if rank is not None else None
            if score is not None and score.score > 0 and score.consumers > 0:
                out.append(score)
        return tuple(out)

    # ------------------------------------------------------------------ integrity
    def check_integrity(self) -> None:
        d = self.directory
        assert len(self._ranked) == len(self._ranked_key)
        assert len(self._unnamed) == len(self._unnamed_key)
        assert len(self._prefetch) == len(self._prefetch_key)
        assert len(self._host) == len(self._host_key)
        for h in self._host_key:
            b = d.get(h)
            assert h in self.dirty or d.changed or (b is not None and b.on_cpu), h.hex()
        for h in chain(self._ranked_key, self._unnamed_key):
            b = d.get(h)
            assert h in self.dirty or d.changed or (b is not None and b.evictable), h.hex()
        assert not set(self._ranked_key) & set(self._unnamed_key)


def _host_key(b: Block, rank: Rank, last: float) -> tuple:
    """A CPU-only block's place in the host tier's drop order: ``Rank.host_value`` (``value``
    when the policy gives none), then LRU; ties go a prefix's tail before its head."""
    value = rank.value if rank.host_value is None else rank.host_value
    return (value, last, -b.depth, b.block_hash)


def _same(a: CachePlan, b: CachePlan) -> bool:
    return (
        a.fallback_lru == b.fallback_lru
        and a.evict_first == b.evict_first
        and a.offload == b.offload
        and a.prefetch == b.prefetch
        and a.host_drop_first == b.host_drop_first
    )
