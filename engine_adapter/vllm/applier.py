"""``PlanApplier``: puts pbkv's latest ``CachePlan`` into effect in a vLLM engine.

Scheduler side; it reads the plan, vLLM's block pool and the host tier's index, and changes
only the free queue's order, the host-tier index and the step's copy orders. Contract:

* **Taking a plan.** ``latest_plan()`` is called at most once per engine step, and not at all
  while ``plan_margin_blocks`` never-used blocks head the free queue (nothing cached can be
  evicted soon, so the order does not matter; counted in ``steps_without_pressure``). Without
  a plan (none, stale, ``fallback_lru``, a dead link) nothing changes: vLLM's own LRU.
* **GPU eviction order.** ``refresh_plan`` sets the free queue to the plan's eviction order
  (``vllm/plan_order.apply_plan``), and again only when the plan or the queue's tail changed:
  allocation pops from the head and a hit removes from the middle, neither of which disturbs
  an order the plan set; frees append cached blocks at the tail. Plan hashes the pool no
  longer holds are counted (``missing_plan_blocks``) and skipped.
* **Host tier** (``host``, capacity ``host_tier_blocks``; 0: none), in the order
  ``cache_manager/plan_order.py`` sets for every engine:

  - *reload on hit*: ``host_hit_tokens`` offers the prompt's blocks after its GPU hit that
    the tier holds without a gap (never the last prompt token: vLLM needs its logits);
    ``load_host_hits`` orders their copies into the blocks vLLM allocated;
  - *saves*: ``write_through_candidates`` (the plan's ``offload``, then unranked computed
    blocks, newest first), only blocks computed in an earlier step, at most
    ``max_saves_per_step`` a step; an unranked block only takes free room; a full tier
    drops (``HostTierIndex.admit``) first the copies of GPU blocks outside the next
    ``exclusive_margin_blocks`` cached blocks of the free queue (in use, or far from
    eviction: the copy can be written again when the block nears eviction; 0: copies are
    kept, as vLLM's CPU offloading and SGLang's HiCache keep them), then by
    ``plan_order.host_drop_order``;
  - *recency*: a lookup touches every block of the prompt the tier holds (``touch_prompt``);
  - *prefetch* (``prefetch``): the plan's ``prefetch`` blocks the tier holds, parents first
    and only under a parent on the GPU, into blocks from the head of the free queue, stopping
    rather than take a block another prefetch needs (``prefetch_spared``).

  ``end_step`` returns the step's copy orders (``HostTierOps``) for the worker.
* It sends no events itself: what it admits to, drops from and prefetches out of the host
  tier goes through the ``BlockReporter``, whose record of the GPU blocks (computed blocks,
  chain parents) it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import prefetch_spared, write_through_candidates
from pbkv.engine_adapter.vllm.host_tier import HostTierIndex, HostTierOps
from pbkv.engine_adapter.vllm.plan_order import apply_plan, cached_block, eviction_possible
from pbkv.engine_adapter.vllm.reporter import BlockReporter
from pbkv.engine_adapter.vllm.stats import ConnectorStats, count_reason


class PlanApplier:
    """Applies the latest plan to one engine (see the module docstring)."""

    def __init__(
        self,
        reporter: BlockReporter,
        latest_plan: Callable[[], CachePlan | None],
        stats: ConnectorStats,
        *,
        step_blocks: int,
        host_tier_blocks: int = 0,
        max_saves_per_step: int = 64,
        prefetch: bool = True,
        plan_margin_blocks: int = 0,
        exclusive_margin_blocks: int = 0,
    ) -> None:
        self.reporter = reporter
        self.latest_plan = latest_plan
        self.stats = stats
        self.block_size = reporter.block_size
        self.step_blocks = step_blocks  # the most blocks one engine step can allocate
        self.max_saves_per_step = max_saves_per_step
        self.prefetch = prefetch
        self._plan_margin_blocks = plan_margin_blocks  # 0: automatic
        self.exclusive_margin_blocks = exclusive_margin_blocks  # 0: keep GPU blocks' copies
        self.pool: Any = None  # vLLM's BlockPool, once bound
        self.host = HostTierIndex(host_tier_blocks)
        self._ops = HostTierOps()
        self._pending_load: dict[str, tuple[int, list[bytes]]] = {}  # req -> (first blk, hashes)
        self._miss_counted: set[str] = set()  # requests whose host-tier miss was blamed
        self._plan: CachePlan | None = None
        self._step = 0  # end_step calls so far
        self._plan_step = -1  # step whose plan self._plan is
        self._applied: tuple[Any, Any] | None = None  # (plan, free-queue tail) last applied

    @property
    def plan(self) -> CachePlan | None:
        """The plan taken this step (``None``: vLLM's LRU)."""
        return self._plan

    @property
    def plan_margin_blocks(self) -> int:
        """Never-used blocks at the free queue's head below which a plan is taken. Automatic:
        four steps' worth of allocation, sixteen with a host tier (write-through must start
        before eviction does)."""
        if self._plan_margin_blocks:
            return self._plan_margin_blocks
        return self.step_blocks * (16 if self.host.capacity_blocks else 4)

    # ------------------------------------------------------------------ GPU eviction order
    def refresh_plan(self) -> None:
        """Take the latest plan once per step and apply it to the free queue when it or the
        queue changed (the module docstring says why the queue's tail tells)."""
        if self.pool is None:
            return
        if self._plan_step != self._step:
            self._plan_step = self._step
            if eviction_possible(self.pool, self.plan_margin_blocks):
                self._plan = self.latest_plan()
            else:
                self._plan = None
                self.stats.steps_without_pressure += 1
        plan = self._plan
        if plan is None:
            return
        queue = self.pool.free_block_queue
        applied = (plan, queue.fake_free_list_tail.prev_free_block)
        if (
            self._applied is not None
            and applied[0] is self._applied[0]
            and applied[1] is self._applied[1]
        ):
            return
        result = apply_plan(self.pool, plan.evict_first)
        self._applied = (plan, queue.fake_free_list_tail.prev_free_block)
        self.stats.plans_applied += 1
        self.stats.missing_plan_blocks += result.missing

    # ------------------------------------------------------------------ reload on hit
    def host_hit_tokens(self, request: Any, num_computed_tokens: int) -> int:
        """Tokens after the request's GPU hit (``num_computed_tokens``) the host tier can
        supply; remembered until ``load_host_hits``."""
        if self.host.capacity_blocks == 0 or len(self.host) == 0:
            return 0
        first = num_computed_tokens // self.block_size
        hashes = [bytes(h) for h in request.block_hashes]
        self.host.touch_prompt(hashes)
        # At least one prompt token must be computed: vLLM needs logits for the last one.
        max_blocks = (request.num_tokens - 1) // self.block_size
        n = self.host.matched_prefix(hashes[first:max_blocks])
        self._blame_miss(request.request_id, hashes[first + n : max_blocks])
        if n == 0:
            return 0
        self._pending_load[request.request_id] = (first, hashes[first : first + n])
        return n * self.block_size

    def _blame_miss(self, request_id: str, missed: list[bytes]) -> None:
        """Once per request: if the first block it misses on both tiers is one the host tier
        dropped, count the order that dropped it (``host_miss_dropped_*``)."""
        if not missed or request_id in self._miss_counted:
            return
        reason = self.host.drop_reason(missed[0])
        if reason is not None:
            self._miss_counted.add(request_id)
            count_reason(self.stats, "host_miss_dropped", reason)

    def load_host_hits(self, request: Any, blocks: Any, num_external_tokens: int) -> int:
        """Order the copies of the host-tier hit vLLM accepted (``num_external_tokens``) into
        the blocks it allocated. Returns the blocks loaded."""
        pending = self._pending_load.pop(request.request_id, None)
        if num_external_tokens <= 0 or pending is None:
            return 0
        first, hashes = pending
        n = num_external_tokens // self.block_size
        block_ids = blocks.get_block_ids()[0][first : first + n]
        for h, block_id in zip(hashes[:n], block_ids, strict=True):
            self._ops.loads.append((h, block_id))
            self.host.touch(h)
        self.host.num_loaded += n
        self.stats.host_hit_blocks += n
        return n

    def forget(self, request_id: str) -> None:
        """The request finished: drop a host-tier hit it never took."""
        self._pending_load.pop(request_id, None)
        self._miss_counted.discard(request_id)

    # ------------------------------------------------------------------ each step
    def end_step(self, stable: Mapping[bytes, tuple[Any, Any]]) -> HostTierOps:
        """Apply the plan, order this step's saves and prefetches; return every copy order of
        the step. ``stable``: ``BlockReporter.stable_blocks()`` taken before this step's
        report (hash -> (block, key) computed in an earlier step); a block is saved only
        from that very block and only while it still holds that key: a hash evicted and
        cached again in this step sits in a block whose KV the forward has not written yet."""
        self.refresh_plan()
        if self.host.capacity_blocks:
            self._order_saves(stable)
            if self.prefetch:
                self._order_prefetches()
        ops, self._ops = self._ops, HostTierOps()
        self._step += 1
        return ops

    def _order_saves(self, stable: Mapping[bytes, tuple[Any, Any]]) -> None:
        plan = self._plan
        if plan is None:
            return
        loading = frozenset(h for h, _ in self._ops.loads)
        budget = self.max_saves_per_step
        stored: list[bytes] = []
        dropped: list[bytes] = []
        gone: set[bytes] = set()
        spare = self._spare_copies()
        computed = self.reporter.gpu_hashes_newest_first()
        for h, ranked in write_through_candidates(plan, computed):
            if budget == 0:
                break
            if not ranked and len(self.host) >= self.host.capacity_blocks:
                break
            if h in self.host or h in loading or h in gone:
                continue
            block, key = stable.get(h, (None, None))
            if block is None or block.block_hash is not key:
                continue
            # Blocks saved this step are never victims in it: the worker saves, then drops.
            admitted, victims = self.host.admit(h, plan, loading | frozenset(stored), spare)
            if not admitted:
                continue
            budget -= 1
            self._ops.saves.append((h, block.block_id))
            stored.append(h)
            dropped.extend(victims)
            gone.update(victims)  # not saved again this step: the worker drops after saving
            for victim in victims:
                count_reason(self.stats, "host_dropped", self.host.drop_reason(victim) or "lru")
        self._ops.drops.extend(dropped)
        # Drops first: the manager's directory holds the tier's capacity and rejects a store
        # into a full tier (before 2026-12-01 night stores went first, so with a full tier the
        # manager lost a step's first stores and later rejected their removals).
        self.reporter.cpu_removed(dropped)
        self.reporter.cpu_stored(stored)

    def _spare_copies(self) -> Callable[[bytes], bool]:
        """Whether a host-tier block is a spare copy: its block is cached on the GPU and not
        among the first ``exclusive_margin_blocks`` cached blocks of the free queue (the
        next the GPU evicts, in the plan's order once applied). Never, with margin 0."""
        margin = self.exclusive_margin_blocks
        if margin == 0 or self.pool is None:
            return lambda h: False
        from vllm.v1.core.kv_cache_utils import get_block_hash

        queue = self.pool.free_block_queue
        at_risk: set[bytes] = set()
        block = queue.fake_free_list_head.next_free_block
        for _ in range(self.pool.num_gpu_blocks):  # bounded: the queue holds fewer
            if block is queue.fake_free_list_tail or len(at_risk) >= margin:
                break
            if block.block_hash is not None:
                at_risk.add(bytes(get_block_hash(block.block_hash)))
            block = block.next_free_block
        pool = self.pool
        return lambda h: h not in at_risk and cached_block(pool, h) is not None

    def _order_prefetches(self) -> None:
        """Copy the plan's ``prefetch`` blocks from the host tier into GPU blocks taken from
        the head of the free queue and register their hashes, so the coming request finds
        them in the prefix cache. The head is what the plan values least (never-used, then
        evict_first, then LRU). The copy runs before this step's forward."""
        plan = self._plan
        if plan is None or not plan.prefetch or not len(self.host):
            return
        from vllm.v1.core.kv_cache_utils import get_block_hash, make_block_hash_with_group_id

        queue = self.pool.free_block_queue
        protected = prefetch_spared(plan)
        saving = {block_id for _, block_id in self._ops.saves}
        loading = {h for h, _ in self._ops.loads}
        wanted = [
            h
            for h in plan.prefetch
            if h in self.host
            and h not in loading
            and self.reporter.knows(h)
            and cached_block(self.pool, h) is None
        ]
        budget = self.max_saves_per_step
        self.stats.prefetch_wanted += len(wanted)
        for h in sorted(wanted, key=self.reporter.depth):  # parents before children
            if budget == 0:
                break
            parent = self.reporter.parent(h)
            if parent is not None and cached_block(self.pool, parent) is None:
                self.stats.prefetch_no_parent += 1
                continue
            head = queue.fake_free_list_head.next_free_block
            if (
                head is queue.fake_free_list_tail
                or head.block_id in saving
                or (
                    head.block_hash is not None
                    and bytes(get_block_hash(head.block_hash)) in protected
                )
            ):
                self.stats.prefetch_no_room += 1
                break  # the next block to go is another prefetch (or is being saved)
            (block,) = self.pool.get_new_blocks(1)
            key = make_block_hash_with_group_id(h, 0)
            block.set_block_hash(key, num_tokens=(self.reporter.depth(h) + 1) * self.block_size)
            self.pool.cached_block_hash_to_block.insert(key, block)
            self.pool.free_blocks([block])  # cached and free: joins the LRU tail
            self._ops.loads.append((h, block.block_id))
            self.host.touch(h)
            self.reporter.prefetched(h, parent, block)
            self.stats.prefetched_blocks += 1
            budget -= 1

    # ------------------------------------------------------------------ resets
    def forget_plan(self) -> None:
        """A new link: no plan until it gives one, and the next one is applied afresh."""
        self._plan = None
        self._plan_step = -1
        self._applied = None

    def reset_host_tier(
        self, capacity_blocks: int | None = None, exclusive_margin_blocks: int | None = None
    ) -> None:
        """Empty the host tier (the worker frees the tensors on the next step); optionally
        resize it and set its exclusive margin."""
        if exclusive_margin_blocks is not None:
            self.exclusive_margin_blocks = exclusive_margin_blocks
        dropped = self.host.hashes()
        self._ops.drops.extend(dropped)
        self.reporter.cpu_removed(dropped)
        capacity = self.host.capacity_blocks if capacity_blocks is None else capacity_blocks
        self.host = HostTierIndex(capacity)
