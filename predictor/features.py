"""Sparse hashed features of a ``WorkflowState`` (nothing else: no future can leak in).

A feature is a string hashed with CRC-32 (stable across processes, unlike ``hash``) into
``2 ** hash_bits`` columns; its value is 1. Text (task, the last step's output) is tokenised
once per distinct string (cached) and conjoined with the last round's agents, which is where
dynamic routing lives ("review: approved" after the reviewer means the tester is next).

    group     examples
    agents    l1=<last round>, l2=<last two>, l3=<last three>, seen=<a>, cnt=<a>:<n>,
              since=<a>:<rounds>
    position  step=<round index, capped>, phase=<last phase>, el=<log2 elapsed s>,
              ot=<log2 output tokens>
    text      tw=<task word>, ow=<last output word>, l1&tw, l1&ow (conjunctions)
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from pbkv.predictor.examples import round_agents, round_token
from pbkv.predictor.forecast import WorkflowState

_WORD = re.compile(r"[a-z0-9_]+")
_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    hash_bits: int = 18
    max_task_words: int = 48
    max_output_words: int = 48
    max_step: int = 16
    max_since_agents: int = 12
    text: bool = True  # the task / output text features (off: agent history only)

    def __post_init__(self) -> None:
        if not 8 <= self.hash_bits <= 24:
            raise ValueError(f"hash_bits must be in [8, 24], got {self.hash_bits}")
        for name in ("max_task_words", "max_output_words", "max_step", "max_since_agents"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_json(self) -> dict:
        return asdict(self)


def _h(feature: str) -> int:
    return zlib.crc32(feature.encode())


@lru_cache(maxsize=8192)  # bounded: keys are whole texts
def _word_hashes(text: str, max_words: int) -> np.ndarray:
    """Distinct words: a quarter from the start, the rest from the end (a message usually
    ends by saying whom it hands over to or what it wants run)."""
    words = list(dict.fromkeys(_WORD.findall(text.lower())))
    if len(words) > max_words:
        head = max_words // 4
        words = words[:head] + words[len(words) - (max_words - head) :]
    return np.array([_h(w) for w in words], dtype=np.uint64)


def _bucket_log2(x: float | None) -> str:
    if x is None or x < 0:
        return "na"
    return str(int(math.log2(1.0 + x)))


def _conjoin(anchor: int, words: np.ndarray, salt: int) -> np.ndarray:
    mixed = np.uint64((anchor * _MIX * (salt * 2 + 1)) & _MASK64)
    return (words ^ mixed) * np.uint64(salt * 2 + 1) >> np.uint64(7)


def state_features(
    state: WorkflowState, config: FeatureConfig, rounds: list[tuple[str, ...]] | None = None
) -> np.ndarray:
    """Sorted unique column indices of the active features (values are all 1)."""
    rounds = round_agents(state) if rounds is None else rounds
    tokens = [round_token(r) for r in rounds[-3:]]  # the features read the last three
    feats = ["b", f"step={min(len(rounds), config.max_step)}"]
    for k in (1, 2, 3):
        feats.append(f"l{k}=" + ("|".join(tokens[-k:]) if len(tokens) >= k else "<start>"))
    counts: dict[str, int] = {}
    since: dict[str, int] = {}
    for back, agents in enumerate(reversed(rounds), start=1):
        for a in agents:
            counts[a] = counts.get(a, 0) + 1
            since.setdefault(a, back)
    for a, c in counts.items():
        feats.append(f"seen={a}")
        feats.append(f"cnt={a}:{min(c, 4)}")
    for a, d in sorted(since.items(), key=lambda kv: kv[1])[: config.max_since_agents]:
        feats.append(f"since={a}:{min(d, 6)}")
    last = state.steps[-1] if state.steps else None
    if last is not None:
        feats.append(f"phase={last.phase}")
        feats.append(f"ot={_bucket_log2(last.output_tokens)}")
    if state.now_s is not None and state.started_s is not None:
        feats.append(f"el={_bucket_log2(state.now_s - state.started_s)}")
    parts = [np.array([_h(f) for f in feats], dtype=np.uint64)]
    if config.text:
        anchor = _h("l1=" + (tokens[-1] if tokens else "<start>"))
        task = _word_hashes(state.task, config.max_task_words)
        parts += [task * np.uint64(3), _conjoin(anchor, task, 1)]
        if last is not None and last.output_text:
            out = _word_hashes(last.output_text, config.max_output_words)
            parts += [out * np.uint64(5), _conjoin(anchor, out, 2)]
    cols = np.concatenate(parts) & np.uint64((1 << config.hash_bits) - 1)
    return np.unique(cols.astype(np.int64))
