"""KV block identity, computed exactly as vLLM 0.32 computes it (``prefix_caching_hash_algo``
``sha256``, the default; no LoRA / multimodal extra keys; ``PYTHONHASHSEED`` unset).

vLLM (``vllm/v1/core/kv_cache_utils.py``, ``hash_block_tokens``) hashes only *full* blocks and
chains each block's hash to its parent's::

    tokens:  | t0 .. t15 | t16 .. t31 | t32 .. t40 (partial: no hash) |
    hashes:  | h0        | h1         |
    h0 = sha256(pickle((NONE_HASH, (t0, .., t15), None)))
    h1 = sha256(pickle((h0, (t16, .., t31), None)))
    NONE_HASH = sha256(pickle("vllm-none-hash"))     # the fixed seed for sha256

``sha256`` there is ``pickle.dumps(obj, protocol=HIGHEST_PROTOCOL)`` fed to SHA-256, so the
same bytes come out here without importing vLLM. Two prompts therefore share exactly the
block hashes of their common full-block prefix, which is what the cache manager's block
directory keys on for the simulated engine and for vLLM alike.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

# vLLM's DEFAULT_NONE_HASH_SEED, used for cryptographic hashes when PYTHONHASHSEED is unset.
NONE_HASH_SEED = "vllm-none-hash"


def sha256_pickle(obj: Any) -> bytes:
    """vLLM's ``sha256`` hash function (``vllm.utils.hashing.sha256``)."""
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


NONE_HASH: bytes = sha256_pickle(NONE_HASH_SEED)


def hash_block_tokens(
    parent_hash: bytes | None,
    block_token_ids: Sequence[int],
    extra_keys: tuple[Any, ...] | None = None,
) -> bytes:
    """The hash of one full block whose parent block has ``parent_hash`` (``None``: first)."""
    parent = parent_hash if parent_hash else NONE_HASH
    return sha256_pickle((parent, tuple(block_token_ids), extra_keys))


def block_hashes(
    token_ids: Sequence[int], tokens_per_block: int, parent_hash: bytes | None = None
) -> list[bytes]:
    """Chained hashes of every *full* block of ``token_ids`` (a trailing partial block has
    none), the first block chained to ``parent_hash``."""
    if tokens_per_block <= 0:
        raise ValueError(f"tokens_per_block must be positive, got {tokens_per_block}")
    out: list[bytes] = []
    parent = parent_hash
    for start in range(0, len(token_ids) - tokens_per_block + 1, tokens_per_block):
        parent = hash_block_tokens(parent, token_ids[start : start + tokens_per_block])
        out.append(parent)
    return out
