"""Helpers for the vLLM adapter tests: a real vLLM ``BlockPool`` with hand-placed cached
blocks (no engine needed), so plan ordering is tested against vLLM's own free queue."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_pool(vllm_available):
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

    def make(num_blocks: int, cached: list[bytes]):
        """A pool whose blocks 1..len(cached) cache ``cached`` (block 0 is vLLM's null block),
        freed in order so that ``cached[0]`` is the least recently used."""
        pool = BlockPool(num_gpu_blocks=num_blocks, enable_caching=True, hash_block_size=4)
        blocks = pool.get_new_blocks(len(cached))
        for block, h in zip(blocks, cached, strict=True):
            key = make_block_hash_with_group_id(h, 0)
            block.set_block_hash(key, num_tokens=4)
            pool.cached_block_hash_to_block.insert(key, block)
        pool.free_blocks(blocks)
        return pool

    return make
