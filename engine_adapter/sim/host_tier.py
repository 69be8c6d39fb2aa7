"""The simulated engine's host (CPU) tier and its link to the GPU pool.

Contract: the tier holds up to ``capacity`` blocks (hash -> parent) in LRU order, oldest
first. Recency is refreshed as vLLM's CPU offloading manager does it: ``touch`` on every
lookup of a prompt (the scheduler's admission attempt), over all its blocks the tier holds,
last block first so that the prompt's head ends most recent (``LRUCachePolicy.touch``); a
write and a prefetch make a block most recent; a load on a lookup hit and an eviction from
the GPU do not (see docs/simulator.md, "CPU-tier recency"). The link has one
queue per direction: a copy starts when its direction is free (or now) and takes
``cost.h2d_s`` / ``cost.d2h_s`` of one block; the share ``1 - cost.transfer_overlap`` of it is
time the engine itself spends copying, collected by ``take_serial`` and added to the next
step; only the rest occupies the link, and a request waiting for the copy waits only for
that rest (the copy is paid once). Every block moved emits ``BlockStored`` on the tier it
reaches; a block the tier drops emits ``BlockRemoved(CPU)``.

* ``load`` copies a tier block into a free GPU slot (``GpuBlockPool.add_loaded``).
* ``write_back`` copies a GPU block to the tier, dropping when full the first block of
  ``plan_order.host_drop_order`` under the current plan (``view``; the plan's
  ``host_drop_first``, then the tier's LRU; with no plan, the LRU block) -- but never a
  ``protecting`` block (one the admission or prefetch at hand is about to load) nor, with
  ``spare_gpu_copies`` (SGLang's ``evict_host``), a block on the GPU;
  when no block can go, the copy is dropped instead (counted: ``dropped_writebacks``).
* ``evict`` / ``make_room`` evict GPU blocks (``GpuBlockPool.victims`` order) and write
  back first each one the plan lists in ``offload`` that the tier lacks -- except in
  write-through and store-on-compute modes, where nothing is written back at eviction.
* ``store`` (store-on-compute mode, vLLM's OffloadingConnector): the scheduler writes each
  prompt block a request has computed or hit and the tier lacks, as its prefill advances.
* ``background`` runs once per iteration with a plan (never without one), booking each
  link at most ``transfer_window_s`` ahead:

  1. write-through mode (``write_through_per_iteration`` > 0): up to that many landed GPU
     blocks the tier lacks, in ``plan_order.write_through_candidates`` order; an unranked
     one only while the tier has room (the first that finds it full ends the pass);
  2. otherwise the plan's ``offload`` blocks still on the GPU (a block still landing ends
     the pass, to be retried);
  3. the plan's ``prefetch`` blocks on the tier and not on the GPU (with
     ``prefetch_needs_parent``, only once the parent is on the GPU), each into a free slot
     or over the first ``prefetch_victims`` block; no slot ends the pass.

  Passes 2 and 3 resume at the plan view's cursors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager

from pbkv.cache_manager.events import BlockRemoved, BlockStored, Tier
from pbkv.cache_manager.plan_order import host_drop_order, write_through_candidates
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.gpu_pool import Emit, GpuBlockPool
from pbkv.engine_adapter.sim.plan_view import PlanView


class HostTier:
    """The CPU tier, the host link and the moves between tiers; see the module docstring."""

    def __init__(
        self,
        capacity: int,
        pool: GpuBlockPool,
        cost: CostModel,
        *,
        tokens_per_block: int,
        engine_id: str,
        emit: Emit,
        start_s: float = 0.0,
        transfer_window_s: float = 0.05,
        write_through_per_iteration: int = 0,
        prefetch_needs_parent: bool = False,
        spare_gpu_copies: bool = False,
        store_on_compute: bool = False,
    ) -> None:
        self.capacity = capacity
        self._pool = pool
        self._cost = cost
        self._tokens_per_block = tokens_per_block
        self._engine_id = engine_id
        self._emit = emit
        self._block_bytes = cost.block_bytes(tokens_per_block)
        self._window_s = transfer_window_s
        self._write_through = write_through_per_iteration
        self._needs_parent = prefetch_needs_parent
        self._spare_gpu = spare_gpu_copies
        self._on_compute = store_on_compute
        self._lru: OrderedDict[bytes, bytes | None] = OrderedDict()  # hash -> parent
        self._protected: Collection[bytes] = frozenset()
        self.view: PlanView | None = None  # the plan in force (set by the scheduler)
        self.h2d_free_s = start_s
        self.d2h_free_s = start_s
        self._serial_s = 0.0
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "h2d_bytes",
                "d2h_bytes",
                "offloaded_blocks",
                "cpu_evictions",
                "prefetched_blocks",
                "dropped_writebacks",
            ),
            0,
        )

    # ------------------------------------------------------------------ reading
    def __contains__(self, h: bytes) -> bool:
        return h in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def cached(self) -> list[bytes]:
        """Tier blocks, least recently used first."""
        return list(self._lru)

    def link_free_times(self, view: PlanView | None) -> list[float]:
        """When each link with background work left on ``view`` frees up."""
        out = []
        if view is not None and view.prefetch_pending:
            out.append(self.h2d_free_s)
        if view is not None and view.offload_pending:
            out.append(self.d2h_free_s)
        return out

    def take_serial(self) -> float:
        """Copy time not hidden behind compute since the last call."""
        serial, self._serial_s = self._serial_s, 0.0
        return serial

    @contextmanager
    def protecting(self, hashes: Collection[bytes]) -> Iterator[None]:
        """Within: ``write_back`` never drops these blocks to make room."""
        self._protected = hashes
        try:
            yield
        finally:
            self._protected = frozenset()

    def touch(self, hashes: Sequence[bytes]) -> None:
        """Refresh the recency of the tier's copies of ``hashes``, last first (the first
        ends most recent), as vLLM's ``LRUCachePolicy.touch``."""
        lru = self._lru
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)

    # ------------------------------------------------------------------ copies
    def _book(self, h2d: bool, now_s: float) -> float:
        """Book one block's copy: the share ``transfer_overlap`` runs on the link (queued);
        the rest is the engine's own work, charged to the next step (``take_serial``), so
        whoever waits for the copy waits only for the link's share (else it would pay the
        serial share twice). Returns when the link's share is done."""
        took = (self._cost.h2d_s if h2d else self._cost.d2h_s)(self._block_bytes)
        overlap = self._cost.transfer_overlap
        self._serial_s += (1.0 - overlap) * took
        if h2d:
            self.h2d_free_s = max(self.h2d_free_s, now_s) + overlap * took
            self.counts["h2d_bytes"] += self._block_bytes
            return self.h2d_free_s
        self.d2h_free_s = max(self.d2h_free_s, now_s) + overlap * took
        self.counts["d2h_bytes"] += self._block_bytes
        return self.d2h_free_s

    def copy_in(self, now_s: float) -> float:
        """Book one block on the host -> GPU link (a tier copy loaded over a GPU copy the
        prefix lookup could not reach); returns when it lands."""
        return self._book(True, now_s)

    def load(
        self, h: bytes, parent: bytes | None, *, ref: int, now_s: float, prefetched: bool = False
    ) -> float:
        """Host -> GPU copy of tier block ``h`` into a free slot; returns when it lands. A
        prefetch makes the tier copy most recent; a lookup hit was touched already."""
        landed = self.copy_in(now_s)
        self._pool.add_loaded(h, parent, ref=ref, ready_s=landed, prefetched=prefetched)
        if prefetched:
            self._lru.move_to_end(h)
        return landed

    def write_back(self, h: bytes, parent: bytes | None, now_s: float) -> float:
        """GPU -> host copy of one block; returns when it is done."""
        if self.capacity == 0:
            return now_s
        if len(self._lru) >= self.capacity:
            lru = self._lru
            view = self.view
            if view is None:
                order: Iterable[bytes] = lru
            else:
                listed, i = view.plan.host_drop_first, view.host_cursor
                while i < len(listed) and listed[i] not in lru:
                    i += 1
                view.host_cursor = i
                order = host_drop_order(view.plan, lru, start=i, host_named=view.host_named)
            old = next(
                (
                    c
                    for c in order
                    if c in lru
                    and c not in self._protected
                    and not (self._spare_gpu and c in self._pool)
                ),
                None,
            )
            if old is None:  # the tier is all spoken for: drop instead of writing back
                self.counts["dropped_writebacks"] += 1
                return now_s
            del self._lru[old]
            self.counts["cpu_evictions"] += 1
            self._emit(BlockRemoved(self._engine_id, (old,), Tier.CPU))
        done = self._book(False, now_s)
        self.counts["offloaded_blocks"] += 1
        self._lru[h] = parent
        self._emit(BlockStored(self._engine_id, (h,), parent, self._tokens_per_block, Tier.CPU))
        return done

    def store(self, hashes: Sequence[bytes], start: int, upto: int, now_s: float) -> None:
        """Store on compute: write ``hashes[start:upto]`` the tier lacks (no-op otherwise)."""
        if not self._on_compute:
            return
        for i in range(start, upto):
            if hashes[i] not in self._lru:
                self.write_back(hashes[i], hashes[i - 1] if i else None, now_s)

    # ------------------------------------------------------------------ eviction
    def evict(self, victims: Sequence[bytes], view: PlanView | None, now_s: float) -> float:
        """Evict ``victims`` from the GPU, writing back the plan's ``offload`` blocks first;
        returns when the last write-back is done."""
        ready = now_s

        def spill(h: bytes, parent: bytes | None) -> None:
            nonlocal ready
            if (
                view is not None
                and h in view.offload
                and h not in self._lru
                and not self._write_through
                and not self._on_compute
            ):
                ready = max(ready, self.write_back(h, parent, now_s))

        self._pool.evict(victims, spill)
        return ready

    def make_room(self, need: int, view: PlanView | None, now_s: float) -> float:
        """Evict until ``need`` GPU slots are free; returns when the last write-back is done."""
        victims = self._pool.victims(need - self._pool.free_slots(), view)
        assert len(victims) >= need - self._pool.free_slots()
        return self.evict(victims, view, now_s)

    # ------------------------------------------------------------------ background
    def background(self, view: PlanView | None, now_s: float) -> None:
        """One iteration's background passes (see the module docstring)."""
        if view is None:
            return
        window = now_s + self._window_s
        if self._write_through:
            self._write_through_pass(view, self._write_through, now_s)
        offload = () if self._write_through else view.plan.offload
        while self.capacity and view.offload_cursor < len(offload) and self.d2h_free_s <= window:
            h = offload[view.offload_cursor]
            b = self._pool.get(h)
            if b is not None and b.ready_s > now_s:
                break  # still landing: retry next pass
            view.offload_cursor += 1
            if b is not None and h not in self._lru:
                self.write_back(h, b.parent, now_s)
        prefetch = view.plan.prefetch
        while view.prefetch_cursor < len(prefetch) and self.h2d_free_s <= window:
            h = prefetch[view.prefetch_cursor]
            parent = self._lru.get(h)
            orphan = self._needs_parent and parent is not None and parent not in self._pool
            if h not in self._pool and h in self._lru and not orphan:
                if self._pool.free_slots() == 0:
                    victims = self._pool.victims(1, view, for_prefetch=True)
                    if not victims:
                        break  # no room now; retry next pass
                    with self.protecting({h}):
                        self.evict(victims, view, now_s)
                self.load(h, self._lru[h], ref=0, now_s=now_s, prefetched=True)
                self.counts["prefetched_blocks"] += 1
            view.prefetch_cursor += 1

    def _write_through_pass(self, view: PlanView, budget: int, now_s: float) -> None:
        if not self.capacity:
            return
        for h, ranked in write_through_candidates(view.plan, self._pool.newest_first()):
            if budget == 0:
                return
            if not ranked and len(self._lru) >= self.capacity:
                return
            b = self._pool.get(h)
            if b is None or h in self._lru or b.ready_s > now_s:
                continue
            self.write_back(h, b.parent, now_s)
            budget -= 1

    # ------------------------------------------------------------------ checks
    def check_integrity(self) -> None:
        """Within capacity, nothing left protected, no negative copy time owed."""
        assert len(self._lru) <= self.capacity, (len(self._lru), self.capacity)
        assert not self._protected
        assert self._serial_s >= 0.0
