"""History-only baselines behind the ``Predictor`` interface, and the oracle.

- ``frequency``: the app's agent frequencies, independent of the state.
- ``markov1``: first-order Markov over rounds (smoothed, backs off to frequency).
- ``markov``: variable-order Markov (order <= 3) with Dirichlet back-off (history expert).
- ``recency``: how long ago each agent ran (history expert; works for unseen agent names).
- ``static-graph``: KVFlow-like fixed schedule, the order of the app's first observed run.
- ``oracle``: reads the workflow's real future (evaluation only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pbkv.predictor.chain import ChainPredictor, workflow_rounds
from pbkv.predictor.examples import round_agents, round_token
from pbkv.predictor.forecast import WorkflowState
from pbkv.predictor.history import HistoryStats
from pbkv.trace import Workflow


def history_from(workflows: Iterable[Workflow], max_order: int = 3) -> HistoryStats:
    stats = HistoryStats(max_order=max_order)
    for wf in workflows:
        if wf.steps:
            stats.add_rounds(wf.app, workflow_rounds(wf))
    return stats


class FrequencyPredictor(ChainPredictor):
    name = "frequency"

    def _next(self, state, rounds, candidates):
        return self.stats.frequency(state.app, candidates)

    def _forecast_key(self, rounds, candidates, horizon):
        return horizon, candidates  # reads nothing else of the state

    def _within(self, state, candidates, p, horizon):
        # Rounds are independent draws: P(within h) = 1 - (1 - p) ** (h * fanout).
        h = np.arange(1, horizon + 1)[None, :] * self.stats.fanout(state.app)
        return 1.0 - (1.0 - p[:, None]) ** h


class MarkovPredictor(ChainPredictor):
    """Markov over round tokens with back-off; ``order=1`` is the ``markov1`` baseline."""

    def __init__(self, stats: HistoryStats, order: int) -> None:
        super().__init__(stats)
        self.order = order
        self.name = "markov1" if order == 1 else "markov"

    def _next(self, state, rounds, candidates):
        return self.stats.markov(state.app, rounds, candidates, max_order=self.order)

    def _forecast_key(self, rounds, candidates, horizon):
        # The context (the last max_order rounds) and the next round's size (the last
        # round's) are all of the state the forecast reads.
        return horizon, candidates, tuple(rounds[-self.stats.max_order :])

    def config(self) -> dict[str, Any]:
        return {"order": self.order}


class RecencyPredictor(ChainPredictor):
    name = "recency"

    def _next(self, state, rounds, candidates):
        return self.stats.recency(state.app, rounds, candidates)


class ScheduledPredictor(ChainPredictor):
    """A predictor that knows (or assumes) the next rounds outright; ``epsilon`` of each
    round's mass is spread over the other agents by frequency so log-loss stays finite."""

    epsilon = 0.1

    def _schedule(
        self, state: WorkflowState, rounds: list[tuple[str, ...]]
    ) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def _round_probs(
        self, app: str, agents: tuple[str, ...], candidates: tuple[str, ...]
    ) -> np.ndarray:
        prior = self.stats.frequency(app, candidates)
        sched = np.array([a in agents for a in candidates], dtype=float)
        if not sched.any():
            return prior
        return (1.0 - self.epsilon) * sched / sched.sum() + self.epsilon * prior

    def _next(self, state, rounds, candidates):
        schedule = self._schedule(state, rounds)
        return self._round_probs(state.app, schedule[0] if schedule else (), candidates)

    def _within(self, state, candidates, p, horizon):
        schedule = self._schedule(state, round_agents(state))
        fanout = self.stats.fanout(state.app)
        not_yet = np.ones(len(candidates))
        out = np.empty((len(candidates), horizon))
        for h in range(horizon):
            agents = schedule[h] if h < len(schedule) else ()
            q = self._round_probs(state.app, agents, candidates)
            # A scheduled agent is called with prob 1 - eps; others by the spread mass.
            calls = np.where(
                [a in agents for a in candidates],
                1.0 - self.epsilon,
                1.0 - (1.0 - q) ** max(fanout, 1.0),
            )
            not_yet = not_yet * (1.0 - calls)
            out[:, h] = 1.0 - not_yet
        return np.clip(out, 0.0, 1.0)


class StaticGraphPredictor(ScheduledPredictor):
    """KVFlow-like: the app's first observed run is its fixed step graph. The position in it
    follows the last agent (its occurrence nearest the current round), else the round index."""

    name = "static-graph"

    def _schedule(self, state, rounds):
        h = self.stats.apps.get(state.app)
        if h is None or not h.first_run:
            return []
        graph = h.first_run
        pos = len(rounds)
        if rounds:
            last = round_token(rounds[-1])
            hits = [i for i, r in enumerate(graph) if round_token(r) == last]
            if hits:
                pos = min(hits, key=lambda i: (abs(i - (len(rounds) - 1)), i)) + 1
        return graph[pos:]


class OraclePredictor(ScheduledPredictor):
    """Reads the real future of the workflows it was given (evaluation only)."""

    name = "oracle"
    epsilon = 1e-6

    def __init__(self, stats: HistoryStats, workflows: Iterable[Workflow]) -> None:
        super().__init__(stats)
        self.futures = {wf.workflow_id: workflow_rounds(wf) for wf in workflows}

    def _schedule(self, state, rounds):
        future = self.futures.get(state.workflow_id)
        return future[len(rounds) :] if future is not None else []
