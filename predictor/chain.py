"""Shared forecast logic: a predictor gives P(next round's agent) and a transition matrix;
``ChainPredictor`` turns them into a ``Forecast`` over the horizon (see ``rollout.py``)."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from pbkv.predictor.examples import round_agents
from pbkv.predictor.forecast import DEFAULT_HORIZON, Forecast, Predictor, WorkflowState
from pbkv.predictor.history import HistoryStats
from pbkv.predictor.rollout import agent_forecasts, within_horizon
from pbkv.trace import Workflow, step_groups


def workflow_rounds(workflow: Workflow) -> list[tuple[str, ...]]:
    return [tuple(workflow.steps[i].agent for i in g) for g in step_groups(workflow)]


MAX_CANDIDATE_SETS = 64  # transition matrices kept per app


class ChainPredictor(Predictor):
    """A predictor built on per-app ``HistoryStats``; subclasses supply ``_next``."""

    name = "chain"

    def __init__(self, stats: HistoryStats) -> None:
        self.stats = stats
        # app -> candidates -> transition matrix, until the app's statistics change
        self._transitions: dict[str, dict[tuple[str, ...], np.ndarray]] = {}

    @abstractmethod
    def _next(
        self, state: WorkflowState, rounds: list[tuple[str, ...]], candidates: tuple[str, ...]
    ) -> np.ndarray:
        """P(next round's agent) over ``candidates`` (sums to 1)."""

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
        set until ``observe_finished`` changes the app's statistics."""
        cached = self._transitions.setdefault(app, {})
        t = cached.get(candidates)
        if t is None:
            if len(cached) >= MAX_CANDIDATE_SETS:
                cached.clear()
            t = cached[candidates] = self.stats.transition(app, candidates)
            t.flags.writeable = False
        return t

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
        candidates, p = self.distribution(state)
        if not candidates:  # an app never seen and nothing observed yet: nothing to say
            return Forecast(state.workflow_id, state.step_index, horizon, (), 0.0, self.name)
        within = self._within(state, candidates, p, horizon)
        return Forecast(
            state.workflow_id,
            state.step_index,
            horizon,
            agent_forecasts(candidates, within),
            self._confidence(state, p),
            self.name,
        )

    def observe_finished(self, state: WorkflowState) -> None:
        self.stats.add_rounds(state.app, round_agents(state))
        self._transitions.pop(state.app, None)

    def observe_finished_workflow(self, workflow: Workflow) -> None:
        """The same online update from a whole finished workflow (a trace)."""
        self.stats.add_rounds(workflow.app, workflow_rounds(workflow))
        self._transitions.pop(workflow.app, None)

    # ---- artifacts (see artifact.py) ------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {}
