"""How much of each prompt a KV cache could reuse, measured on token sequences.

Two figures, both as shares of all prompt tokens, over prompts in the order they run (runs
one after another, steps in order):

perfect prefix (``prefix_share``)
    what a never-evicting prefix cache reuses: per prompt, the longest block-aligned prefix
    whose full blocks (chained, as vLLM hashes them: ``engine_adapter/block_hash.py``) any
    earlier prompt of the collection already held.
non-prefix (``nonprefix_share``)
    content that recurs from earlier in the same run at another offset, which a prefix cache
    cannot reuse (a KVCOMM / CacheBlend-style capability could): tokens *past* that prefix
    covered by a shingle of ``SHINGLE_TOKENS`` consecutive tokens that occurred in an earlier
    prompt of the same run (at any position). Shingles, not blocks, so content that moved by
    any number of tokens still counts.

``trace_token_runs`` gives the token ids of an imported trace (``materialize``), and
``text_token_runs`` those of prompt texts (``tokens.approx_token_pieces``, one id per piece),
so the same measure runs on both and tells whether a trace's segments keep the sharing the
real prompt texts have.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pbkv.trace import Workflow
from pbkv.training.materialize import prompt_token_ids
from pbkv.training.tokens import approx_token_pieces

BLOCK_TOKENS = 16  # the simulator's KV block
SHINGLE_TOKENS = 16
VOCAB_SIZE = 32_000  # the simulator's default vocabulary

TokenRun = list[list[int]]  # the prompts of one run, in order


@dataclass(frozen=True, slots=True)
class Reuse:
    prompt_tokens: int
    prefix_tokens: int  # covered by the perfect prefix cache
    nonprefix_tokens: int  # past that prefix, seen earlier in the run

    @property
    def prefix_share(self) -> float:
        return self.prefix_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def nonprefix_share(self) -> float:
        return self.nonprefix_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def measure_reuse(
    runs: Iterable[TokenRun], block_tokens: int = BLOCK_TOKENS, shingle_tokens: int = SHINGLE_TOKENS
) -> Reuse:
    """Both reuse figures over ``runs`` (see the module docstring)."""
    seen_blocks: set[int] = set()
    total = prefix = nonprefix = 0
    weights = _shingle_weights(shingle_tokens)
    for run in runs:
        run_blocks: set[int] = set()
        run_shingles: set[int] = set()
        for tokens in run:
            total += len(tokens)
            chain = _block_chain(tokens, block_tokens)
            hit = _leading(chain, seen_blocks) * block_tokens
            prefix += hit
            seen_blocks.update(chain)
            shingles = _shingles(tokens, weights)
            # only shingles reaching past the prefix can cover a token past it
            start = max(0, hit - shingle_tokens + 1)
            tail = shingles[start:].tolist()
            if tail and run_shingles:
                seen = np.fromiter((h in run_shingles for h in tail), dtype=bool, count=len(tail))
                covered = _covered(seen, len(tokens) - start, shingle_tokens)
                nonprefix += int(covered[hit - start :].sum())
            # a prefix this run already held had its shingles added then
            known = _leading(chain, run_blocks) * block_tokens
            run_shingles.update(shingles[max(0, known - shingle_tokens + 1) :].tolist())
            run_blocks.update(chain)
    return Reuse(total, prefix, nonprefix)


def _block_chain(tokens: Sequence[int], block: int) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` (equal exactly for equal prefixes)."""
    out = []
    parent = 0
    for start in range(0, len(tokens) - block + 1, block):
        parent = hash((parent, tuple(tokens[start : start + block])))
        out.append(parent)
    return out


def _leading(chain: list[int], seen: set[int]) -> int:
    """How many leading blocks of ``chain`` are in ``seen``."""
    for i, h in enumerate(chain):
        if h not in seen:
            return i
    return len(chain)


def _shingle_weights(k: int) -> np.ndarray:
    return np.random.default_rng(k).integers(1, 2**63, size=k, dtype=np.uint64) | np.uint64(1)


def _shingles(tokens: Sequence[int], weights: np.ndarray) -> np.ndarray:
    k = len(weights)
    if len(tokens) < k:
        return np.empty(0, dtype=np.uint64)
    arr = np.asarray(tokens, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(arr, k)
    with np.errstate(over="ignore"):
        return (windows * weights).sum(axis=1, dtype=np.uint64)


def _covered(starts: np.ndarray, n: int, k: int) -> np.ndarray:
    """Which of ``n`` positions lie in a shingle marked in ``starts``."""
    marks = np.zeros(n + 1, dtype=np.int64)
    idx = np.flatnonzero(starts)
    np.add.at(marks, idx, 1)
    np.add.at(marks, idx + k, -1)
    return np.cumsum(marks[:n]) > 0


def trace_token_runs(
    workflows: Iterable[Workflow], vocab_size: int = VOCAB_SIZE
) -> Iterator[TokenRun]:
    """Each workflow's prompts as the token ids the simulator and replayer use."""
    for wf in workflows:
        yield [prompt_token_ids(wf, i, vocab_size) for i in range(len(wf.steps))]


def text_token_runs(runs: Iterable[Sequence[str]]) -> Iterator[TokenRun]:
    """Each run's prompt texts as token ids (one id per ``approx_token_pieces`` piece)."""
    for texts in runs:
        yield [text_token_ids(t) for t in texts]


def text_token_ids(text: str) -> list[int]:
    """One id per token piece. Pieces never span a line break, so the text is tokenized line
    by line (lines recur across prompts: each is tokenized once)."""
    out: list[int] = []
    for line in _LINES.findall(text):
        out.extend(_line_ids(line))
    return out


_LINES = re.compile(r"[^\n]*\n|[^\n]+")


@lru_cache(maxsize=1 << 16)
def _line_ids(line: str) -> tuple[int, ...]:
    return tuple(zlib.crc32(piece.encode()) for piece in approx_token_pieces(line))
