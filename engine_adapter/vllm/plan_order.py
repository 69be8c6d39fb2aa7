"""Applying a ``CachePlan`` to vLLM's free-block queue (the GPU prefix cache's eviction order).

vLLM allocates from the head of ``BlockPool.free_block_queue`` and a freed cached block joins
the tail, which makes the queue an LRU list of evictable cached blocks::

    head (handed out next)                                           tail (evicted last)
    | never-used blocks | evict_first[0] .. [-1] | unnamed cached, LRU order        |

Handing out a never-used (hash-less) block evicts nothing, so those stay ahead; the plan's
``evict_first`` blocks go right behind them: the eviction order of
``cache_manager.plan_order.eviction_order``, set with vLLM's linked-list mechanics. Only free
blocks move: a block in use by a running request is not evictable, and a hash the pool no
longer holds is skipped (plans may name blocks the engine already dropped).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ApplyResult:
    moved_to_head: int
    missing: int  # hashes the pool no longer caches (ignored)


def cached_block(pool: Any, block_hash: bytes) -> Any | None:
    """The pool's cached block for ``block_hash`` in KV cache group 0, or ``None``."""
    blocks = pool.get_cached_block(block_hash, [0])
    return blocks[0] if blocks else None


def _free_blocks(pool: Any, hashes: Iterable[bytes]) -> tuple[list[Any], int]:
    found, missing, seen = [], 0, set()
    for h in hashes:
        block = cached_block(pool, h)
        if block is None:
            missing += 1
        elif block.ref_cnt == 0 and not block.is_null and block.block_id not in seen:
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
