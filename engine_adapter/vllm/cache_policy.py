"""``PbkvCachePolicy``: pbkv's plan order for vLLM's native ``OffloadingConnector`` CPU tier.

For CUDA deployments, vLLM's own offloading connector moves KV between GPU and a CPU tier; its
CPU-tier eviction policy is pluggable by name. Run it beside ``PbkvConnector`` (vLLM's
``MultiConnector``) with::

    "kv_connector_extra_config": {"eviction_policy": "PbkvCachePolicy",
        "cache_policy_module_path": "pbkv.engine_adapter.vllm.cache_policy", ...}

The policy evicts in the order the latest ``CachePlan`` gives (``evict_first`` first, then
unnamed chunks by LRU: ``cache_manager.plan_order.host_rank``); without a plan it is exactly
vLLM's ``LRUCachePolicy``. The plan comes from the ``PbkvConnector`` in the same scheduler process
(``set_plan_source``). Offload keys are a block hash plus a 4-byte group index, so plans name
chunks by the same hashes as GPU blocks (offloaded block size = GPU block size).

Contract kept from ``CachePolicy.evict``: evict exactly ``n``, skip ``protected`` and chunks in
use, atomic (``None`` and no change when ``n`` cannot be met). A plan source that raises
means LRU for that call; its errors are counted (``plan_source_errors``) and logged at most
once a minute.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable

from vllm.v1.kv_offload.base import OffloadKey, get_offload_block_hash
from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus
from vllm.v1.kv_offload.cpu.policies.lru import LRUCachePolicy

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import host_rank
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

_plan_source: Callable[[], CachePlan | None] | None = None
_source_errors = ThrottledLog(log, "pbkv plan source of PbkvCachePolicy")


def set_plan_source(source: Callable[[], CachePlan | None] | None) -> None:
    """Where every ``PbkvCachePolicy`` in this process reads the latest plan from."""
    global _plan_source
    _plan_source = source


def _current_plan() -> CachePlan | None:
    if _plan_source is None:
        return None
    try:
        return _plan_source()
    except Exception as exc:  # noqa: BLE001 - fail open: a broken source means LRU
        _source_errors.failed("evict", exc)
        return None


def plan_source_errors() -> int:
    """How many times the plan source raised (each time, that eviction was LRU)."""
    return _source_errors.num_failures


class PbkvCachePolicy(LRUCachePolicy):
    def evict(
        self, n: int, protected: set[OffloadKey]
    ) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        plan = _current_plan()
        if plan is None or not plan.evict_first:
            return super().evict(n, protected)
        if n == 0:
            return []
        rank = host_rank(plan)

        def order(key: OffloadKey) -> tuple[int, int]:
            # plan rank, then least recently used
            return rank(get_offload_block_hash(key)), self._ranks[key]

        candidates = [
            k for k in self._evictable if k not in protected and self.chunks[k].ref_cnt == 0
        ]
        if len(candidates) < n:
            return None
        chosen = sorted(candidates, key=order)[:n]
        evicted = []
        for key in chosen:
            self._evictable.remove(key)
            del self._ranks[key]
            evicted.append((key, self.chunks.pop(key)))
        self._heap = [(self._ranks[k], k) for k in self._evictable]
        heapq.heapify(self._heap)
        return evicted
