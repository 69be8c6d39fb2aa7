"""Predictors by name. Every factory takes ``workflows`` (the history to learn from); the
oracle also reads their futures, so give it the workflows it will be evaluated on.

    PREDICTORS.create("markov1", workflows=train)
    PREDICTORS.create("oracle", workflows=train + test)
    PREDICTORS.create("fused", workflows=train, seed=0)    # trains the full model
"""

from __future__ import annotations

from collections.abc import Sequence

from pbkv.predictor.baselines import (
    FrequencyPredictor,
    MarkovPredictor,
    OraclePredictor,
    RecencyPredictor,
    StaticGraphPredictor,
    history_from,
)
from pbkv.predictor.forecast import Predictor
from pbkv.registry import Registry
from pbkv.trace import Workflow

PREDICTORS: Registry[Predictor] = Registry("predictor")

# History-only predictors: what the fused model must beat (``pbkv evaluate`` lists them).
HISTORY_BASELINES = ("frequency", "markov1", "markov", "recency", "static-graph")


@PREDICTORS.register("frequency")
def _frequency(workflows: Sequence[Workflow]) -> Predictor:
    return FrequencyPredictor(history_from(workflows))


@PREDICTORS.register("markov1")
def _markov1(workflows: Sequence[Workflow]) -> Predictor:
    return MarkovPredictor(history_from(workflows, max_order=1), order=1)


@PREDICTORS.register("markov")
def _markov(workflows: Sequence[Workflow], order: int = 3) -> Predictor:
    return MarkovPredictor(history_from(workflows, max_order=order), order=order)


@PREDICTORS.register("recency")
def _recency(workflows: Sequence[Workflow]) -> Predictor:
    return RecencyPredictor(history_from(workflows))


@PREDICTORS.register("static-graph")
def _static_graph(workflows: Sequence[Workflow]) -> Predictor:
    return StaticGraphPredictor(history_from(workflows))


@PREDICTORS.register("oracle")
def _oracle(workflows: Sequence[Workflow]) -> Predictor:
    return OraclePredictor(history_from(workflows), workflows)


@PREDICTORS.register("fused")
def _fused(workflows: Sequence[Workflow], **config) -> Predictor:
    from pbkv.predictor.fused import FusedConfig, FusedPredictor

    return FusedPredictor.fit(list(workflows), FusedConfig(**config))
