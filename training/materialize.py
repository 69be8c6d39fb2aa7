"""Token ids for a step's prompt, built from its segments.

Every content key (``trace.content_key``) is a deterministic, endless token stream; a segment of
``n`` tokens takes the stream's first ``n``. Two prompts therefore share exactly the prefix where
their segments agree, which is where the real framework's prompts would share KV blocks. The
simulator and the vLLM replayer both build prompts here, so they see the same prefixes.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from pbkv.trace import Workflow, content_key

# Ids below this are left alone: real tokenizers put special tokens there.
FIRST_TOKEN_ID = 16


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=4096)
def _stream(key: str, vocab_size: int, num_tokens: int) -> tuple[int, ...]:
    rng = np.random.default_rng(_seed(key))
    return tuple(rng.integers(FIRST_TOKEN_ID, vocab_size, size=num_tokens).tolist())


# Streams are generated in chunks so a longer read reproduces every shorter one exactly.
_CHUNK = 1024


def stream_tokens(key: str, num_tokens: int, vocab_size: int) -> list[int]:
    """The first ``num_tokens`` tokens of the stream ``key``."""
    if vocab_size <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_TOKEN_ID}, got {vocab_size}")
    out: list[int] = []
    chunk = 0
    while len(out) < num_tokens:
        out.extend(_stream(f"{key}#{chunk}", vocab_size, _CHUNK))
        chunk += 1
    return out[:num_tokens]


def prompt_token_ids(workflow: Workflow, step_index: int, vocab_size: int) -> list[int]:
    """The prompt of ``workflow.steps[step_index]`` as token ids."""
    ids: list[int] = []
    for seg_index, seg in enumerate(workflow.steps[step_index].prompt):
        ids.extend(
            stream_tokens(content_key(workflow, step_index, seg_index), seg.tokens, vocab_size)
        )
    return ids
