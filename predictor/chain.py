"""Shared forecast logic: a predictor gives P(next round's agent) and a transition matrix;
``ChainPredictor`` turns them into a ``Forecast`` over the horizon (see ``rollout.py``)."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from pbkv.predictor.examples import round_agents
from pbkv.predictor.forecast import (
    DEFAULT_HORIZON,
    AgentForecast,
    Forecast,
    Predictor,
    WorkflowState,
)
from pbkv.predictor.history import HistoryStats
from pbkv.predictor.rollout import agent_forecasts, within_horizon
from pbkv.trace import Workflow, step_groups


def workflow_rounds(workflow: Workflow) -> list[tuple[str, ...]]:
    return [tuple(workflow.steps[i].agent for i in g) for g in step_groups(workflow)]


MAX_CANDIDATE_SETS = 64  # transition matrices kept per app
MAX_CACHED_FORECASTS = 1_024  # forecasts kept per app (a subclass that opts in)
_Cached = tuple[tuple[AgentForecast, ...], float]  # a forecast's agents and confidence


class ChainPredictor(Predictor):
    """A predictor built on per-app ``HistoryStats``; subclasses supply ``_next``."""

    name = "chain"

    def __init__(self, stats: HistoryStats) -> None:
        self.stats = stats
        # app -> (its statistics' version, candidates -> transition matrix)
        self._transitions: dict[str, tuple[int, dict[tuple[str, ...], np.ndarray]]] = {}
        # app -> (its statistics' version, forecast key -> (agents, confidence))
        self._forecasts: dict[str, tuple[int, dict[tuple, _Cached]]] = {}

    @abstractmethod
    def _next(
        self, state: WorkflowState, rounds: list[tuple[str, ...]], candidates: tuple[str, ...]
    ) -> np.ndarray:
        """P(next round's agent) over ``candidates`` (sums to 1)."""

    def _forecast_key(
        self, rounds: list[tuple[str, ...]], candidates: tuple[str, ...], horizon: int
    ) -> tuple | None:
        """Everything of the state (besides the app and its statistics) that this predictor's
        forecast reads, or None (the default): forecasts are not cached. A subclass whose
        forecast reads only the last rounds opts in by returning them (with the candidates
        and the horizon): equal keys then mean equal forecasts until ``observe_finished``."""
        return None

    def _confidence(self, state: WorkflowState, p: np.ndarray) -> float:
        """1 - normalised entropy of the next distribution (0 for a uniform guess)."""
        if len(p) <= 1:
            return 1.0 if len(p) == 1 else 0.0
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        return min(1.0, max(0.0, 1.0 - entropy / math.log(len(p))))

    def _transition(self, app: str, candidates: tuple[str, ...]) -> np.ndarray:
        """The app's transition matrix over ``candidates`` (the known agents, plus those a
        workflow called that the app's history has not seen), computed once per candidate
        set until the app's statistics change (their ``version``)."""
        cached = self._app_cache(self._transitions, app, MAX_CANDIDATE_SETS)
        t = cached.get(candidates)
        if t is None:
            t = cached[candidates] = self.stats.transition(app, candidates)
            t.flags.writeable = False
        return t

    def _app_cache(self, caches: dict[str, tuple[int, dict]], app: str, cap: int) -> dict:
        """``app``'s entries in ``caches``, emptied when the app's statistics changed (their
        ``version``) or when ``cap`` entries are held."""
        version = self.stats.version(app)
        entry = caches.get(app)
        if entry is None or entry[0] != version or len(entry[1]) >= cap:
            entry = caches[app] = (version, {})
        return entry[1]

    def distribution(self, state: WorkflowState) -> tuple[tuple[str, ...], np.ndarray]:
        rounds = round_agents(state)
        candidates = self.stats.candidates(state.app, rounds)
        if not candidates:
            return (), np.zeros(0)
        return candidates, self._next(state, rounds, candidates)

    def next_distribution(self, state: WorkflowState) -> dict[str, float]:
        candidates, p = self.distribution(state)
        return dict(zip(candidates, p.tolist(), strict=True))

    def _within(
        self, state: WorkflowState, candidates: tuple[str, ...], p: np.ndarray, horizon: int
    ) -> np.ndarray:
        t = self._transition(state.app, candidates)
        next_size = self.stats.next_size(state.app, round_agents(state))
        return within_horizon(p, t, horizon, self.stats.fanout(state.app), next_size)

    def forecast(self, state: WorkflowState, horizon: int = DEFAULT_HORIZON) -> Forecast:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        app = state.app
        rounds = round_agents(state)
        candidates = self.stats.candidates_of(app, state.agents())
        key = self._forecast_key(rounds, candidates, horizon)
        if key is None:
            agents, confidence = self._agents_confidence(state, rounds, candidates, horizon)
        else:
            known = self._app_cache(self._forecasts, app, MAX_CACHED_FORECASTS)
            cached = known.get(key)
            if cached is None:
                cached = known[key] = self._agents_confidence(state, rounds, candidates, horizon)
            agents, confidence = cached
        return Forecast(state.workflow_id, state.step_index, horizon, agents, confidence, self.name)

    def _agents_confidence(
        self,
        state: WorkflowState,
        rounds: list[tuple[str, ...]],
        candidates: tuple[str, ...],
        horizon: int,
    ) -> _Cached:
        if not candidates:  # an app never seen and nothing observed yet: nothing to say
            return (), 0.0
        p = self._next(state, rounds, candidates)
        within = self._within(state, candidates, p, horizon)
        return agent_forecasts(candidates, within), self._confidence(state, p)

    def observe_finished(self, state: WorkflowState) -> None:
        self.stats.add_rounds(state.app, round_agents(state))
        self._forget(state.app)

    def observe_finished_workflow(self, workflow: Workflow) -> None:
        """The same online update from a whole finished workflow (a trace)."""
        self.stats.add_rounds(workflow.app, workflow_rounds(workflow))
        self._forget(workflow.app)

    def _forget(self, app: str) -> None:
        """The app's statistics changed: drop what was computed from them."""
        self._transitions.pop(app, None)
        self._forecasts.pop(app, None)

    # ---- artifacts (see artifact.py) ------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {}
