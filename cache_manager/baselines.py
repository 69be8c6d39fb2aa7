"""Two-tier baselines users run today instead of pbkv: engine LRU on the GPU, a CPU tier
ordered by LRU, no prediction. Neither names a block in its plans; what sets them apart is
*when the engine writes the CPU tier* and *which CPU copy it drops*, so each comes with the
engine options it stands for (``ENGINE_OPTIONS``, fields of the simulator's
``EngineConfig``; plain names, so this module does not import the engine).

    name          writes the CPU tier          drops from the CPU tier        loads
    lru-offload   at GPU eviction (write-back) its LRU copy                   a hit
    hicache       on compute (write_through)   its LRU copy of a block no     a hit
                                               longer on the GPU
    vllm-offload  on compute                   its LRU copy                   a hit

Sources read (see docs/cache-manager.md, "Baselines", for what each does and what is
modelled):

* ``hicache``: SGLang ``python/sglang/srt/mem_cache/hiradix_cache.py`` (``HiRadixCache``):
  ``_insert_helper`` calls ``inc_hit_count`` on a new node unless the policy is
  ``write_back``; with ``write_through`` (threshold 1) that backs the node up to host memory
  at once (``write_backup``, which calls ``evict_host`` when the host pool is full);
  ``evict_host`` pops leaves by ``last_access_time`` and skips nodes still on the device;
  ``match_prefix`` refreshes ``last_access_time`` on every node of the matched path and
  ``init_load_back`` loads a host-only suffix back. ``write_back`` (backup at ``evict``) is
  what ``lru-offload`` models; ``write_through_selective`` (backup after repeated hits) is
  not modelled.
* ``vllm-offload``: vLLM ``vllm/distributed/kv_transfer/kv_connector/v1/offloading_connector``
  (``OffloadingConnectorScheduler``: ``get_num_new_matched_tokens`` touches all the
  request's blocks, then looks up the longest offloaded run after the GPU prefix;
  ``_get_reqs_to_store`` stores each new full block via ``prepare_store``) and
  ``vllm/v1/kv_offload`` (``LRUCachePolicy``: ``touch`` moves blocks to the MRU end, last
  first; ``evict`` takes the LRU blocks not being read).
"""

from __future__ import annotations

from typing import Any

from pbkv.cache_manager.policies import LruPolicy


class HicachePolicy(LruPolicy):
    """SGLang HiRadixCache with ``--hicache-write-policy write_through``."""

    name = "hicache"


class VllmOffloadPolicy(LruPolicy):
    """vLLM's OffloadingConnector with its CPU LRU backend."""

    name = "vllm-offload"


ENGINE_OPTIONS: dict[str, dict[str, Any]] = {
    "hicache": {"cpu_write": "compute", "cpu_spares_gpu_copies": True},
    "vllm-offload": {"cpu_write": "compute"},
}

# Baselines that forecast no agent, each with the same host tier as pbkv: best-nonpred is the
# best of them at each point. ``continuum`` learns pause lengths (a TTL), not which agent comes
# next, so it belongs here; ``cachesage`` and ``kvflow`` forecast agents and do not.
NON_PREDICTIVE_TWO_TIER = ("lru-offload", "hicache", "vllm-offload", "continuum")


def engine_options(policy: str) -> dict[str, Any]:
    """The ``EngineConfig`` fields the policy stands for (empty for every other policy)."""
    return dict(ENGINE_OPTIONS.get(policy, {}))
