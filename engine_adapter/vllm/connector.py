"""``PbkvConnector``: vLLM's out-of-tree KV connector (``kv_connector_module_path``) for pbkv.

Load it with::

    KVTransferConfig(kv_connector="PbkvConnector",
                     kv_connector_module_path="pbkv.engine_adapter.vllm.connector",
                     kv_role="kv_both",
                     kv_connector_extra_config={"engine_id": "vllm-0", "link": "in-process",
                                                "host_tier_blocks": 256})

Scheduler side, every scheduler step (never waiting on the network)::

    get_num_new_matched_tokens  apply the latest plan to the free queue; count host-tier hits
    update_state_after_alloc    order host->paged loads; report RequestStarted (tags, hits)
    build_connector_meta        apply the plan again; report BlockStored / BlockRemoved (GPU
                                and CPU tiers); order host-tier saves (``plan_order``)
    request_finished            report RequestFinished

Worker side, ``start_load_kv`` executes the step's host-tier copy orders (saves, then loads,
then drops) before the forward.
No plan, a stale plan or a dead link leave vLLM's own LRU order untouched (fail open).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachePlan,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.plan_order import host_rank, prefetch_spared, write_through_candidates
from pbkv.engine_adapter.vllm import links
from pbkv.engine_adapter.vllm.host_tier import HostKVStore, HostTierIndex, HostTierOps
from pbkv.engine_adapter.vllm.plan_order import apply_plan, cached_block, eviction_possible
from pbkv.engine_adapter.vllm.tags import tags_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    engine_id: str = "vllm-0"
    link: str = "in-process"
    service_target: str = "127.0.0.1:50151"
    host_tier_blocks: int = 0  # 0: no host tier
    max_saves_per_step: int = 64  # host-tier copies ordered per step (saves; prefetches)
    prefetch: bool = True  # request-less prefetch of the plan's host-tier blocks
    # No plan is taken while this many never-used blocks head the free queue (nothing cached
    # can be evicted soon, so order does not matter); 0: four steps' worth of allocation
    # (max_num_batched_tokens / block_size + max_num_seqs, per step), 16 with a host tier
    # (write-through must start before eviction does).
    plan_margin_blocks: int = 0
    selftest: bool = True

    def __post_init__(self) -> None:
        if self.link not in links.LINKS:
            raise ValueError(f"kv_connector_extra_config 'link' must be one of "
                             f"{links.LINKS.names()}, got {self.link!r}")
        if not self.engine_id:
            raise ValueError("kv_connector_extra_config 'engine_id' must not be empty")
        if self.host_tier_blocks < 0:
            raise ValueError(f"kv_connector_extra_config 'host_tier_blocks' must be >= 0, "
                             f"got {self.host_tier_blocks}")
        if self.plan_margin_blocks < 0:
            raise ValueError(f"kv_connector_extra_config 'plan_margin_blocks' must be >= 0, "
                             f"got {self.plan_margin_blocks}")
        if self.max_saves_per_step < 0:
            raise ValueError(f"kv_connector_extra_config 'max_saves_per_step' must be >= 0, "
                             f"got {self.max_saves_per_step}")

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> ConnectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"kv_connector_extra_config: unknown keys {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**extra)


@dataclass
class PbkvConnectorMetadata(KVConnectorMetadata):
    ops: HostTierOps = field(default_factory=HostTierOps)


@dataclass(slots=True)
class ConnectorStats:
    steps: int = 0
    plans_applied: int = 0
    steps_without_pressure: int = 0  # no plan taken: nothing cached could be evicted soon
    scheduler_s: float = 0.0  # wall seconds in the scheduler-side hooks (incl. the link)
    missing_plan_blocks: int = 0
    host_hit_blocks: int = 0
    prefetched_blocks: int = 0
    prefetch_wanted: int = 0  # plan prefetch blocks the host tier holds, summed over steps
    prefetch_no_parent: int = 0  # ... skipped: parent not on the GPU
    prefetch_no_room: int = 0  # steps a prefetch stopped at a block it may not take
    requests_tagged: int = 0
    requests_anonymous: int = 0


def _timed(hook: Any) -> Any:
    """Count a scheduler-side hook's wall time in ``stats.scheduler_s`` (what pbkv adds to
    each engine step)."""
    @functools.wraps(hook)
    def wrapper(self: PbkvConnector, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.stats.scheduler_s += time.perf_counter() - t0

    return wrapper


class PbkvConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra(
            dict(self._kv_transfer_config.kv_connector_extra_config))
        self.block_size = vllm_config.cache_config.block_size
        self.stats = ConnectorStats()
        sched = vllm_config.scheduler_config
        self._step_blocks = -(-sched.max_num_batched_tokens // self.block_size) \
            + sched.max_num_seqs  # the most blocks one step can allocate
        # scheduler side
        self.pool: Any = None
        self.link: links.EngineLink = links.NullLink()
        self.host = HostTierIndex(self.config.host_tier_blocks)
        self._plan: CachePlan | None = None
        self._live: dict[str, Any] = {}  # request id -> Request
        self._started: set[str] = set()
        self._pending_load: dict[str, tuple[int, list[bytes]]] = {}  # req -> (first blk, hashes)
        self._local_hit: dict[str, int] = {}  # req -> GPU prefix-cache hit blocks
        self._ops = HostTierOps()
        self._reported: dict[bytes, bytes | None] = {}  # GPU hash reported stored -> parent
        # GPU hash reported stored -> (block, its block_hash key then): removal is a changed key
        self._reported_at: dict[bytes, tuple[Any, Any]] = {}
        self._scan: dict[str, int] = {}  # live request -> first block index not yet reported
        self._step = 0  # build_connector_meta calls so far
        self._plan_step = -1  # step whose plan self._plan is
        self._applied: tuple[Any, Any] | None = None  # (plan, free-queue tail) last applied
        # Could the coming step evict a cached block? (If not, the next report skips looking
        # for evictions.) The pool's hash map object changes when vLLM resets the cache.
        self._evictions_possible = True
        self._pool_map: Any = None
        self._parents: dict[bytes, bytes | None] = {}  # parent of every GPU or host block
        # Set to a list to record each step's batch shape (cost-model calibration).
        self.step_log: list[tuple[list[tuple[int, int]], list[int]]] | None = None
        # worker side
        self.store = HostKVStore()
        self._num_blocks = getattr(kv_cache_config, "num_blocks", 0)

    # ------------------------------------------------------------------ scheduler side
    def bind_gpu_block_pool(self, gpu_block_pool: Any) -> None:
        if self.config.selftest:
            from pbkv.engine_adapter.vllm.selftest import check_block_pool
            check_block_pool(gpu_block_pool)
        self.pool = gpu_block_pool
        self.link = links.LINKS.create(self.config.link, self.config.engine_id,
                                       self.config.service_target)
        # A native OffloadingConnector beside this one (CUDA) orders its CPU tier by our plan.
        from pbkv.engine_adapter.vllm.cache_policy import set_plan_source
        set_plan_source(lambda: self._plan)
        self.link.attach(gpu_blocks=gpu_block_pool.num_gpu_blocks - 1,  # minus the null block
                         cpu_blocks=self.config.host_tier_blocks,
                         tokens_per_block=self.block_size)

    @property
    def plan_margin_blocks(self) -> int:
        if self.config.plan_margin_blocks:
            return self.config.plan_margin_blocks
        return self._step_blocks * (16 if self.host.capacity_blocks else 4)

    def _refresh_plan(self) -> None:
        """Take the link's latest plan once per step and apply it to the free queue when it
        or the queue changed. Allocation pops from the head and a hit removes from the middle,
        neither of which disturbs the order a plan set; frees append cached blocks at the tail,
        so (plan, tail) says whether the order may be stale."""
        if self.pool is None:
            return
        if self._plan_step != self._step:
            self._plan_step = self._step
            if eviction_possible(self.pool, self.plan_margin_blocks):
                self._plan = self.link.latest_plan()
            else:
                self._plan = None
                self.stats.steps_without_pressure += 1
        plan = self._plan
        if plan is None:
            return
        queue = self.pool.free_block_queue
        applied = (plan, queue.fake_free_list_tail.prev_free_block)
        if self._applied is not None and applied[0] is self._applied[0] \
                and applied[1] is self._applied[1]:
            return
        result = apply_plan(self.pool, plan.evict_first)
        self._applied = (plan, queue.fake_free_list_tail.prev_free_block)
        self.stats.plans_applied += 1
        self.stats.missing_plan_blocks += result.missing

    @_timed
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        self._refresh_plan()
        first = num_computed_tokens // self.block_size
        self._local_hit[request.request_id] = first
        if self.host.capacity_blocks == 0 or len(self.host) == 0:
            return 0, False
        hashes = [bytes(h) for h in request.block_hashes]
        # At least one prompt token must be computed: vLLM needs logits for the last one.
        max_blocks = (request.num_tokens - 1) // self.block_size
        n = self.host.matched_prefix(hashes[first:max_blocks])
        if n == 0:
            return 0, False
        self._pending_load[request.request_id] = (first, hashes[first:first + n])
        return n * self.block_size, False

    @_timed
    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        req_id = request.request_id
        pending = self._pending_load.pop(req_id, None)
        num_cpu_hit = 0
        if num_external_tokens > 0 and pending is not None:
            first, hashes = pending
            n = num_external_tokens // self.block_size
            block_ids = blocks.get_block_ids()[0][first:first + n]
            for h, block_id in zip(hashes[:n], block_ids, strict=True):
                self._ops.loads.append((h, block_id))
                self.host.touch(h)
            num_cpu_hit = n
            self.host.num_loaded += n
            self.stats.host_hit_blocks += n
        if req_id in self._started:
            return
        self._started.add(req_id)
        self._live[req_id] = request
        tags = tags_of(request)
        if tags.workflow_id is None:
            self.stats.requests_anonymous += 1
        else:
            self.stats.requests_tagged += 1
        num_gpu_hit = self._local_hit.pop(req_id, 0)
        self.link.send(RequestStarted(
            engine_id=self.config.engine_id, request_id=req_id,
            block_hashes=tuple(bytes(h) for h in request.block_hashes),
            num_prompt_tokens=request.num_prompt_tokens,
            num_gpu_hit_blocks=num_gpu_hit, num_cpu_hit_blocks=num_cpu_hit,
            workflow_id=tags.workflow_id, agent=tags.agent, tenant=tags.tenant))

    @_timed
    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        self.stats.steps += 1
        if self.step_log is not None:
            self.step_log.append(self._batch_shape(scheduler_output))
        stable = set(self._reported)  # computed in an earlier step: safe to copy now
        if self.link.resync_needed():
            self._resync()
        self._report_block_changes()
        self._refresh_plan()
        if self.host.capacity_blocks:
            self._order_saves(stable)
            if self.config.prefetch:
                self._order_prefetches()
        # Allocation in one step takes at most _step_blocks blocks from the head of the free
        # queue; while twice that many never-used blocks head it, no cached block can go.
        self._evictions_possible = eviction_possible(self.pool, 2 * self._step_blocks)
        ops, self._ops = self._ops, HostTierOps()
        self._step += 1
        return PbkvConnectorMetadata(ops=ops)

    def _batch_shape(self, out: Any) -> tuple[list[tuple[int, int]], list[int]]:
        """(prefill chunks as (new tokens, tokens before them), decode context lengths)."""
        scheduled = out.num_scheduled_tokens
        prefills = [(scheduled[r.req_id], r.num_computed_tokens) for r in out.scheduled_new_reqs]
        decodes: list[int] = []
        cached = out.scheduled_cached_reqs
        for rid, ctx in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
            n = scheduled[rid]
            request = self._live.get(rid)
            if n == 1 and request is not None and ctx >= request.num_prompt_tokens:
                decodes.append(ctx)
            else:
                prefills.append((n, ctx))
        return prefills, decodes

    def _report_block_changes(self) -> None:
        """Tell the link which GPU blocks were evicted and which the live requests have filled
        since the last call. Work per step is proportional to the blocks reported (a key
        compare each, and only when the last step left eviction possible or the cache was
        reset) plus the blocks that changed, not to the live requests' lengths."""
        engine_id = self.config.engine_id
        removed = []
        pool_map = self.pool.cached_block_hash_to_block
        if self._evictions_possible or pool_map is not self._pool_map:
            for h, (block, key) in self._reported_at.items():
                if block.block_hash is not key:
                    removed.append(h)
        self._pool_map = pool_map
        for h in removed:
            other = cached_block(self.pool, h)  # a duplicate block may still hold the hash
            if other is not None:
                self._reported_at[h] = (other, other.block_hash)
                continue
            del self._reported[h], self._reported_at[h]
            if h not in self.host:
                self._parents.pop(h, None)
        removed = [h for h in removed if h not in self._reported]
        if removed:
            self.link.send(BlockRemoved(engine_id, tuple(removed), Tier.GPU))
        for req_id, request in self._live.items():
            hashes = request.block_hashes
            i = self._scan.get(req_id, 0)
            run: list[bytes] = []
            parent: bytes | None = bytes(hashes[i - 1]) if i else None
            while i < len(hashes):
                h = bytes(hashes[i])
                if h in self._reported:
                    if run:
                        self.link.send(BlockStored(engine_id, tuple(run), parent,
                                                   self.block_size, Tier.GPU))
                        run = []
                    parent = h
                    i += 1
                    continue
                block = cached_block(self.pool, h)
                if block is None:  # blocks are filled in order: the rest are not yet
                    break
                self._reported[h] = self._parents[h] = run[-1] if run else parent
                self._reported_at[h] = (block, block.block_hash)
                run.append(h)
                i += 1
            self._scan[req_id] = i
            if run:
                self.link.send(BlockStored(engine_id, tuple(run), parent, self.block_size,
                                           Tier.GPU))

    def _resync(self) -> None:
        """Re-announce the whole cache after a (re)connect: the service may have restarted."""
        engine_id = self.config.engine_id
        self.link.send(AllBlocksCleared(engine_id, None))
        for h, parent in self._reported.items():  # insertion order: parents before children
            self.link.send(BlockStored(engine_id, (h,), parent, self.block_size, Tier.GPU))
        self._send_cpu_stored(self.host.hashes())

    def _order_saves(self, stable: set[bytes]) -> None:
        plan = self._plan
        if plan is None:
            return
        loading = frozenset(h for h, _ in self._ops.loads)
        budget = self.config.max_saves_per_step
        stored: list[bytes] = []
        dropped: list[bytes] = []
        rank = host_rank(plan)
        for h, ranked in write_through_candidates(plan, reversed(self._reported)):
            if budget == 0:
                break
            if not ranked and len(self.host) >= self.host.capacity_blocks:
                break
            if h in self.host or h not in stable or h in loading:
                continue
            block = cached_block(self.pool, h)
            if block is None:
                continue
            admitted, victims = self.host.admit(h, rank, loading)
            if not admitted:
                continue
            budget -= 1
            self._ops.saves.append((h, block.block_id))
            stored.append(h)
            dropped.extend(victims)
        self._ops.drops.extend(dropped)
        self._send_cpu_stored(stored)
        self._send_cpu_removed(dropped)

    def _order_prefetches(self) -> None:
        """Request-less prefetch: copy the plan's ``prefetch`` blocks from the host tier into
        GPU blocks taken from the head of the free queue and register their hashes, so the
        coming request finds them in the prefix cache. The head is what the plan values least
        (never-used, then evict_first, then LRU); a prefetch stops rather than take a block
        another prefetch needs (``plan_order.prefetch_spared``). Only blocks whose parent is on
        the GPU (or roots) are fetched, parents first; the copy runs before this step's
        forward."""
        plan = self._plan
        if plan is None or not plan.prefetch or not len(self.host):
            return
        from vllm.v1.core.kv_cache_utils import get_block_hash, make_block_hash_with_group_id

        queue = self.pool.free_block_queue
        protected = prefetch_spared(plan)
        saving = {block_id for _, block_id in self._ops.saves}
        loading = {h for h, _ in self._ops.loads}
        wanted = [h for h in plan.prefetch if h in self.host and h not in loading
                  and h in self._parents and cached_block(self.pool, h) is None]
        budget = self.config.max_saves_per_step
        self.stats.prefetch_wanted += len(wanted)
        for h in sorted(wanted, key=self._depth):  # parents before children
            if budget == 0:
                break
            parent = self._parents[h]
            if parent is not None and cached_block(self.pool, parent) is None:
                self.stats.prefetch_no_parent += 1
                continue
            head = queue.fake_free_list_head.next_free_block
            if head is queue.fake_free_list_tail or head.block_id in saving or (
                    head.block_hash is not None
                    and bytes(get_block_hash(head.block_hash)) in protected):
                self.stats.prefetch_no_room += 1
                break  # the next block to go is another prefetch (or is being saved)
            (block,) = self.pool.get_new_blocks(1)
            key = make_block_hash_with_group_id(h, 0)
            block.set_block_hash(key, num_tokens=(self._depth(h) + 1) * self.block_size)
            self.pool.cached_block_hash_to_block.insert(key, block)
            self.pool.free_blocks([block])  # cached and free: joins the LRU tail
            self._ops.loads.append((h, block.block_id))
            self.host.touch(h)
            self._reported[h] = parent
            self._reported_at[h] = (block, block.block_hash)
            self.link.send(BlockStored(self.config.engine_id, (h,), parent, self.block_size,
                                       Tier.GPU))
            self.stats.prefetched_blocks += 1
            budget -= 1

    def _depth(self, block_hash: bytes) -> int:
        """Blocks before this one in its chain (as far as the parents are known)."""
        depth, h = 0, self._parents.get(block_hash)
        while h is not None and depth < 100_000:
            depth += 1
            h = self._parents.get(h)
        return depth

    def _send_cpu_stored(self, hashes: list[bytes]) -> None:
        # One event per block: host-tier blocks need not form a chain among themselves.
        for h in hashes:
            self.link.send(BlockStored(self.config.engine_id, (h,), self._parents.get(h),
                                       self.block_size, Tier.CPU))

    def _send_cpu_removed(self, hashes: list[bytes]) -> None:
        if not hashes:
            return
        for h in hashes:
            if h not in self._reported:
                self._parents.pop(h, None)
        self.link.send(BlockRemoved(self.config.engine_id, tuple(hashes), Tier.CPU))

    @_timed
    def request_finished(self, request: Any, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._pending_load.pop(req_id, None)
        self._local_hit.pop(req_id, None)
        if self._live.pop(req_id, None) is not None:
            self._report_block_changes_for(request)
        self._scan.pop(req_id, None)
        self._started.discard(req_id)
        self.link.send(RequestFinished(self.config.engine_id, req_id,
                                       num_output_tokens=request.num_output_tokens))
        return False, None

    def _report_block_changes_for(self, request: Any) -> None:
        self._live[request.request_id] = request
        try:
            self._report_block_changes()
        finally:
            self._live.pop(request.request_id, None)

    def set_link(self, link: links.EngineLink) -> None:
        """Report to ``link`` from now on (a fresh manager: it is told the cache anew)."""
        self.link = link
        self._reported.clear()
        self._reported_at.clear()
        self._scan.clear()
        self._parents = {h: p for h, p in self._parents.items() if h in self.host}
        self._plan = None
        self._plan_step = -1
        self._applied = None
        self._evictions_possible = True

    def reset_host_tier(self, capacity_blocks: int | None = None) -> None:
        """Empty the host tier (the worker frees the tensors on the next step)."""
        dropped = self.host.hashes()
        self._ops.drops.extend(dropped)
        self._send_cpu_removed(dropped)
        capacity = self.host.capacity_blocks if capacity_blocks is None else capacity_blocks
        self.host = HostTierIndex(capacity)

    def shutdown(self) -> None:
        if self._role == KVConnectorRole.SCHEDULER:
            self.link.close()

    # ------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        num_blocks = self._num_blocks or self._kv_cache_config.num_blocks
        self.store.register(kv_caches, num_blocks)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if isinstance(meta, PbkvConnectorMetadata) and meta.ops:
            self.store.execute(meta.ops)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any,
                      **kwargs: Any) -> None:
        return None

    def wait_for_save(self) -> None:
        return None
