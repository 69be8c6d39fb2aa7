"""The simulated engine's GPU block pool: slots, cached blocks, ref counts, the free LRU.

Contract (the simulator's counterpart of nano-vllm's ``BlockManager``; the scheduler and the
host tier ask it through predicates and never touch its dicts)::

    | cached, in use (ref>0) | cached, evictable (ref=0) | held by requests, uncached | free |
                             '-- free LRU: a block joins its end when its last user lets go

* A cached block is keyed by its chained block hash and records its parent, its ref count
  (running requests that hold it), when it lands (a load in flight) and whether a prefetch
  brought it and no request has hit it yet.
* ``free_slots`` = capacity - cached blocks - uncached slots held by requests; in the
  ``ideal`` bound, cached blocks nobody uses take no slot (nothing is ever evicted).
* ``can_allocate(need, hits)``: whether ``need`` more slots can be had, by evicting if need
  be, once the ``hits`` (cached blocks a new request is about to pin) are spoken for.
* ``victims``: evictable blocks in eviction order -- plain LRU with no plan, otherwise
  ``plan_order.eviction_order`` (or ``prefetch_victims`` for a prefetch, which takes no LRU
  block when there is no plan). Blocks in use are never victims.
* ``evict`` drops victims in the order given, calling ``spill`` on each first (the host
  tier's write-back), then emits one ``BlockRemoved(GPU)`` for all of them.
* Every block stored emits ``BlockStored(GPU)``: a load one by one, computed prompt blocks
  in runs of consecutive indices, each run chained to the block before it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from pbkv.cache_manager.events import BlockRemoved, BlockStored, EngineEvent, Tier
from pbkv.cache_manager.plan_order import eviction_order, prefetch_victims
from pbkv.engine_adapter.sim.plan_view import PlanView

Emit = Callable[[EngineEvent], None]
Spill = Callable[[bytes, "bytes | None"], None]


class GpuBlock:
    """One cached block (read-only outside ``GpuBlockPool``)."""

    __slots__ = ("parent", "ref_cnt", "ready_s", "prefetched")

    def __init__(
        self, parent: bytes | None, ref_cnt: int, ready_s: float, prefetched: bool = False
    ) -> None:
        self.parent = parent
        self.ref_cnt = ref_cnt
        self.ready_s = ready_s  # a load in flight lands at this time
        self.prefetched = prefetched  # loaded by a plan's prefetch, not hit yet


class GpuBlockPool:
    """``capacity`` GPU slots; see the module docstring."""

    def __init__(
        self,
        capacity: int,
        *,
        tokens_per_block: int,
        engine_id: str,
        emit: Emit,
        ideal: bool = False,
    ) -> None:
        self.capacity = capacity
        self.ideal = ideal
        self._tokens_per_block = tokens_per_block
        self._engine_id = engine_id
        self._emit = emit
        self._blocks: dict[bytes, GpuBlock] = {}
        self._free_lru: OrderedDict[bytes, None] = OrderedDict()  # ref 0, evict from front
        self._uncached = 0
        self.counts: dict[str, int] = {"gpu_evictions": 0, "prefetch_used_blocks": 0}

    # ------------------------------------------------------------------ reading
    def __contains__(self, h: bytes) -> bool:
        return h in self._blocks

    def get(self, h: bytes) -> GpuBlock | None:
        return self._blocks.get(h)

    def cached(self) -> list[bytes]:
        """Cached blocks, oldest stored first."""
        return list(self._blocks)

    def newest_first(self) -> Iterator[bytes]:
        return reversed(self._blocks)

    def evictable(self) -> list[bytes]:
        """Blocks with no user, in plain-LRU eviction order (first = evicted first)."""
        return list(self._free_lru)

    def free_slots(self) -> int:
        cached = len(self._blocks) - (len(self._free_lru) if self.ideal else 0)
        return self.capacity - cached - self._uncached

    def can_allocate(self, need: int, hits: Sequence[bytes]) -> bool:
        """Whether ``need`` more slots can be freed once ``hits`` are pinned."""
        pinned_evictable = sum(1 for h in hits if h in self._free_lru)
        if self.ideal:
            return need + pinned_evictable <= self.free_slots()
        return need <= self.free_slots() + len(self._free_lru) - pinned_evictable

    def victims(self, n: int, view: PlanView | None, *, for_prefetch: bool = False) -> list[bytes]:
        """Up to ``n`` evictable blocks in eviction order (see the module docstring)."""
        if n <= 0:
            return []
        if view is None:
            if for_prefetch:
                return []
            return [h for h, _ in zip(self._free_lru, range(n), strict=False)]
        out: list[bytes] = []
        chosen: set[bytes] = set()
        order = (
            prefetch_victims(view.plan, self._free_lru, view.named, view.prefetch)
            if for_prefetch
            else eviction_order(view.plan, self._free_lru, view.named)
        )
        for h in order:
            if h in self._free_lru and h not in chosen:
                out.append(h)
                chosen.add(h)
                if len(out) >= n:
                    break
        return out

    # ------------------------------------------------------------------ requests
    def pin(self, h: bytes) -> float:
        """One more user of cached block ``h``; returns when it lands."""
        b = self._blocks[h]
        if b.ref_cnt == 0:
            del self._free_lru[h]
        b.ref_cnt += 1
        return b.ready_s

    def note_hits(self, hits: Sequence[bytes]) -> None:
        """A request hit these blocks: a prefetched one counts as used (once)."""
        for h in hits:
            b = self._blocks[h]
            if b.prefetched:
                b.prefetched = False
                self.counts["prefetch_used_blocks"] += 1

    def reserve(self, n: int) -> None:
        """``n`` uncached slots for a request (its prompt's rest and its output)."""
        self._uncached += n

    def cache_computed(
        self, hashes: Sequence[bytes], start: int, upto: int, now_s: float
    ) -> list[bytes]:
        """Prompt blocks ``hashes[start:upto]`` were computed: each not cached yet becomes a
        cached block held once, in a slot the request had reserved. Returns those blocks."""
        stored: list[int] = []
        for i in range(start, upto):
            h = hashes[i]
            if h in self._blocks:
                continue  # cached meanwhile by another request: a private duplicate
            self._blocks[h] = GpuBlock(hashes[i - 1] if i else None, 1, now_s)
            self._uncached -= 1
            stored.append(i)
        for run in _runs(stored):
            parent = hashes[run[0] - 1] if run[0] else None
            self._emit(
                BlockStored(
                    self._engine_id,
                    tuple(hashes[i] for i in run),
                    parent,
                    self._tokens_per_block,
                    Tier.GPU,
                )
            )
        return [hashes[i] for i in stored]

    def release(self, held: Sequence[bytes], uncached: int) -> None:
        """A request is done: its blocks lose a user, last one first (so a prompt's tail is
        evicted before its head, as vLLM does); its ``uncached`` slots are free."""
        for h in reversed(held):
            b = self._blocks[h]
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self._free_lru[h] = None
        self._uncached -= uncached

    # ------------------------------------------------------------------ loads, eviction
    def add_loaded(
        self, h: bytes, parent: bytes | None, *, ref: int, ready_s: float, prefetched: bool = False
    ) -> None:
        """A block copied in from the host tier into a free slot, landing at ``ready_s``."""
        self._blocks[h] = GpuBlock(parent, ref, ready_s, prefetched)
        if ref == 0:
            self._free_lru[h] = None
        self._emit(BlockStored(self._engine_id, (h,), parent, self._tokens_per_block, Tier.GPU))

    def evict(self, victims: Sequence[bytes], spill: Spill) -> None:
        for h in victims:
            b = self._blocks[h]
            assert b.ref_cnt == 0
            spill(h, b.parent)
            del self._blocks[h]
            del self._free_lru[h]
        if victims:
            self.counts["gpu_evictions"] += len(victims)
            self._emit(BlockRemoved(self._engine_id, tuple(victims), Tier.GPU))

    # ------------------------------------------------------------------ checks
    def check_integrity(
        self, refs: dict[bytes, int] | None = None, uncached: int | None = None
    ) -> None:
        """Free slots >= 0, the free LRU is exactly the cached blocks with ref 0; with the
        holders' view (``refs`` per block, ``uncached`` slots) given, the counts match it."""
        assert self.free_slots() >= 0
        assert self._uncached >= 0
        if uncached is not None:
            assert uncached == self._uncached, (uncached, self._uncached)
        for h, b in self._blocks.items():
            if refs is not None:
                assert b.ref_cnt == refs.get(h, 0), (h.hex()[:8], b.ref_cnt, refs.get(h, 0))
            assert b.ref_cnt >= 0
            assert (b.ref_cnt == 0) == (h in self._free_lru)
        assert all(h in self._blocks for h in self._free_lru)


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs: [1, 2, 4] -> [[1, 2], [4]]."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out
