"""Applying a ``CachePlan`` to vLLM's free-block queue (the GPU prefix cache's eviction order).

vLLM allocates from the head of ``BlockPool.free_block_queue`` and a freed cached block joins
the tail, which makes the queue an LRU list of evictable cached blocks::

    head (handed out next)                                           tail (evicted last)
    | never-used blocks | evict_first[0] .. [-1] | unnamed cached, LRU order        |

Handing out a never-used (hash-less) block evicts nothing, so those stay ahead; the plan's
``evict_first`` blocks go right behind them: the eviction order of
``cache_manager.plan_order.eviction_order``, set with vLLM's linked-list mechanics. Only free
blocks move: a block in use by a running request is not evictable, and a hash the pool no
longer holds is skipped (plans may name blocks the engine already dropped). A hash vLLM caches
in two blocks (a request that hit a whole prompt recomputes its last block into a new block,
and both stay cached) moves with both copies: a copy left behind would sit after every block
the plan names and outlive the blocks the plan values most.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id


@dataclass(frozen=True, slots=True)
class ApplyResult:
    moved_to_head: int
    missing: int  # hashes the pool no longer caches (ignored)


def cached_block(pool: Any, block_hash: bytes) -> Any | None:
    """The pool's cached block for ``block_hash`` in KV cache group 0, or ``None``."""
    blocks = pool.get_cached_block(block_hash, [0])
    return blocks[0] if blocks else None


def cached_copies(pool: Any, block_hash: bytes) -> list[Any]:
    """Every block of the pool that caches ``block_hash`` in KV cache group 0 (usually one).
    Reads ``BlockHashToBlockMap._cache`` (a block, or a dict of them by id), whose shape the
    self-test checks: vLLM's public ``get_one_block`` returns only the first copy."""
    held = pool.cached_block_hash_to_block._cache.get(make_block_hash_with_group_id(block_hash, 0))
    if held is None:
        return []
    return list(held.values()) if isinstance(held, dict) else [held]


def _free_blocks(pool: Any, hashes: Iterable[bytes]) -> tuple[list[Any], int]:
    found, missing, seen = [], 0, set()
    for h in hashes:
        copies = cached_copies(pool, h)
        if not copies:
            missing += 1
        for block in copies:
            if block.ref_cnt == 0 and not block.is_null and block.block_id not in seen:
                seen.add(block.block_id)
                found.append(block)
    return found, missing


def apply_plan(pool: Any, evict_first: tuple[bytes, ...]) -> ApplyResult:
    """Reorder ``pool.free_block_queue`` as the module docstring shows."""
    queue = pool.free_block_queue
    drop_blocks, missing = _free_blocks(pool, evict_first)
    for block in drop_blocks:
        queue.remove(block)
    _insert_before_first_cached(queue, drop_blocks)
    return ApplyResult(len(drop_blocks), missing)


def _insert_before_first_cached(queue: Any, blocks: list[Any]) -> None:
    """Link ``blocks`` (in order) in front of the first cached block of the free queue."""
    if not blocks:
        return
    node = queue.fake_free_list_head.next_free_block
    while node is not queue.fake_free_list_tail and node.block_hash is None:
        node = node.next_free_block
    for block in blocks:
        prev = node.prev_free_block
        block.prev_free_block, block.next_free_block = prev, node
        prev.next_free_block = block
        node.prev_free_block = block
    queue.num_free_blocks += len(blocks)


def eviction_possible(pool: Any, margin_blocks: int) -> bool:
    """Could the next ``margin_blocks`` allocations evict a cached block? Not while the head
    of the free queue holds that many never-used blocks (vLLM keeps those at the head: they
    are handed out first). Walks at most ``margin_blocks`` nodes."""
    queue = pool.free_block_queue
    node, tail = queue.fake_free_list_head.next_free_block, queue.fake_free_list_tail
    for _ in range(margin_blocks):
        if node is tail or node.block_hash is not None:
            return True
        node = node.next_free_block
    return False


def free_queue_ids(pool: Any) -> list[int]:
    """Block ids of the free queue, head first (tests and the self-test)."""
    return [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]
