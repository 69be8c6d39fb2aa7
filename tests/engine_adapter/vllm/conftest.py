"""Helpers for the vLLM adapter tests: a real vLLM ``BlockPool`` with hand-placed cached
blocks (no engine needed), so plan ordering is tested against vLLM's own free queue, and
stand-ins for the few fields of vLLM's ``Request`` the connector reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

BLOCK_TOKENS = 4  # tokens per block of the pools below


@pytest.fixture
def cache_blocks(vllm_available):
    from vllm.v1.core.kv_cache_utils import make_block_hash_with_group_id

    def cache(pool, hashes: list[bytes]):
        """Allocate one block per hash, in order, and enter it in the prefix cache, as a
        request that computed them does; the blocks stay in use (``ref_cnt`` 1)."""
        blocks = pool.get_new_blocks(len(hashes))
        for block, h in zip(blocks, hashes, strict=True):
            key = make_block_hash_with_group_id(h, 0)
            block.set_block_hash(key, num_tokens=BLOCK_TOKENS)
            pool.cached_block_hash_to_block.insert(key, block)
        return blocks

    return cache


@pytest.fixture
def make_pool(vllm_available, cache_blocks):
    from vllm.v1.core.block_pool import BlockPool

    def make(num_blocks: int, cached: list[bytes]):
        """A pool whose blocks 1..len(cached) cache ``cached`` (block 0 is vLLM's null block),
        freed in order so that ``cached[0]`` is the least recently used."""
        pool = BlockPool(
            num_gpu_blocks=num_blocks, enable_caching=True, hash_block_size=BLOCK_TOKENS
        )
        pool.free_blocks(cache_blocks(pool, cached))
        return pool

    return make


def make_request(
    request_id: str,
    block_hashes: list[bytes],
    *,
    tags: dict | None = None,
    num_tokens: int | None = None,
    num_output_tokens: int = 0,
) -> SimpleNamespace:
    """The fields of a vLLM ``Request`` the connector reads: a prompt of whole blocks (plus
    one token unless ``num_tokens`` says otherwise)."""
    num_prompt_tokens = BLOCK_TOKENS * len(block_hashes) + 1
    return SimpleNamespace(
        request_id=request_id,
        block_hashes=list(block_hashes),
        num_prompt_tokens=num_prompt_tokens,
        num_tokens=num_prompt_tokens if num_tokens is None else num_tokens,
        num_output_tokens=num_output_tokens,
        sampling_params=SimpleNamespace(extra_args=tags),
    )


@pytest.fixture
def request_of():
    return make_request
