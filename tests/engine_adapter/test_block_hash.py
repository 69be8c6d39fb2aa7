"""Block hashes must be byte-identical to vLLM 0.32's, or the manager cannot match blocks."""

from __future__ import annotations

import pytest

from pbkv.engine_adapter.block_hash import NONE_HASH, block_hashes, hash_block_tokens


def test_full_blocks_only_and_chained() -> None:
    tokens = list(range(100, 141))  # 41 tokens: two full blocks of 16, a partial one of 9
    hashes = block_hashes(tokens, 16)
    assert len(hashes) == 2
    assert hashes[0] == hash_block_tokens(None, tokens[:16])
    assert hashes[1] == hash_block_tokens(hashes[0], tokens[16:32])
    # The same tokens under another parent are another block.
    assert hash_block_tokens(hashes[1], tokens[:16]) != hashes[0]
    # None and NONE_HASH are the same root, as in vLLM.
    assert hash_block_tokens(NONE_HASH, tokens[:16]) == hashes[0]


def test_shared_prefix_shares_exactly_the_common_full_blocks() -> None:
    a = list(range(64)) + [1] * 16
    b = list(range(64)) + [2] * 16
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert ha[:4] == hb[:4]
    assert ha[4] != hb[4]


def test_parent_hash_continues_a_chain() -> None:
    tokens = list(range(64))
    whole = block_hashes(tokens, 16)
    tail = block_hashes(tokens[32:], 16, parent_hash=whole[1])
    assert tail == whole[2:]


def test_bad_block_size() -> None:
    with pytest.raises(ValueError, match="tokens_per_block"):
        block_hashes([1, 2, 3], 0)


@pytest.mark.slow  # importing vLLM takes ~10-20 s on this machine
def test_matches_vllm(vllm_available: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    kv_cache_utils.init_none_hash(sha256)
    assert bytes(kv_cache_utils.NONE_HASH) == NONE_HASH
    tokens = [17, 5000, 31999, 42] * 12  # 48 tokens: three full blocks
    parent = None
    for i, ours in enumerate(block_hashes(tokens, 16)):
        parent = kv_cache_utils.hash_block_tokens(sha256, parent, tokens[16 * i : 16 * i + 16])
        assert bytes(parent) == ours
