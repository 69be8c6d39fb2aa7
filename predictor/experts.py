"""Experts: each gives P(next round's agent) over a state's candidates. The fused model
combines their log-probabilities (``fusion.py``). History experts read counts; context
experts read the hashed features of the live state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from pbkv.errors import require
from pbkv.predictor.forecast import WorkflowState
from pbkv.predictor.history import HistoryStats


@dataclass(frozen=True, slots=True)
class StateContext:
    """A state prepared once for all experts."""

    state: WorkflowState
    rounds: list[tuple[str, ...]]
    candidates: tuple[str, ...]
    cols: np.ndarray  # hashed feature columns (features.state_features)


class Expert(ABC):
    name: str

    @abstractmethod
    def probs(self, ctx: StateContext) -> np.ndarray:
        """P(next agent) over ``ctx.candidates`` (sums to 1, every entry > 0)."""


class MarkovExpert(Expert):
    name = "markov"

    def __init__(self, stats: HistoryStats) -> None:
        self.stats = stats

    def probs(self, ctx: StateContext) -> np.ndarray:
        return self.stats.markov(ctx.state.app, ctx.rounds, ctx.candidates)


class FrequencyExpert(Expert):
    name = "frequency"

    def __init__(self, stats: HistoryStats) -> None:
        self.stats = stats

    def probs(self, ctx: StateContext) -> np.ndarray:
        return self.stats.frequency(ctx.state.app, ctx.candidates)


class RecencyExpert(Expert):
    name = "recency"

    def __init__(self, stats: HistoryStats) -> None:
        self.stats = stats

    def probs(self, ctx: StateContext) -> np.ndarray:
        return self.stats.recency(ctx.state.app, ctx.rounds, ctx.candidates)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


# Experts that need an optional dependency to train: name -> (module, the pip extra with it).
NEEDS_EXTRA = {"gru": ("torch", "gru"), "embedding": ("sentence_transformers", "embed")}


def require_experts(names: tuple[str, ...]) -> None:
    """Raise ``MissingExtra`` (a ``UserError`` naming the extra to install) when one of the
    experts ``names`` cannot be trained here; callers check before any long work."""
    for name in names:
        if name in NEEDS_EXTRA:
            module, extra = NEEDS_EXTRA[name]
            require(module, extra, f"the {name} expert")
