"""The predictor's boundary types: what it is told (``WorkflowState``) and what it answers
(``Forecast``). The cache manager reads forecasts; it never sees features or models."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

DEFAULT_HORIZON = 4


@dataclass(frozen=True, slots=True)
class ObservedStep:
    """One step of a running workflow, as far as it is known when the next one is predicted."""

    agent: str
    parallel_group: str | None = None
    output_text: str | None = None
    output_tokens: int = 0
    start_s: float | None = None
    end_s: float | None = None
    phase: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """Everything known about a workflow before its next step (no field may leak the future)."""

    workflow_id: str
    app: str
    task: str = ""
    tenant: str = "default"
    steps: tuple[ObservedStep, ...] = ()
    started_s: float | None = None
    now_s: float | None = None

    @property
    def step_index(self) -> int:
        return len(self.steps)

    def extended(self, step: ObservedStep) -> WorkflowState:
        return WorkflowState(
            self.workflow_id, self.app, self.task, self.tenant, (*self.steps, step),
            self.started_s, step.end_s if step.end_s is not None else self.now_s,
        )


@dataclass(frozen=True, slots=True)
class AgentForecast:
    """Forecast for one agent of a workflow.

    ``p_within[h-1]`` is P(the agent is called within the next h steps), non-decreasing in h;
    ``p_within[0]`` is P(next step). ``eta_steps`` is the expected number of steps until its
    next call, ``None`` when it is not expected within the horizon.
    """

    agent: str
    p_within: tuple[float, ...]
    eta_steps: float | None

    @property
    def p_next(self) -> float:
        return self.p_within[0]


@dataclass(frozen=True, slots=True)
class Forecast:
    """Per-agent forecasts for one workflow at one step, with a confidence in [0, 1] that says
    how far to trust them (the cache manager is conservative when it is low)."""

    workflow_id: str
    step_index: int
    horizon: int
    agents: tuple[AgentForecast, ...]
    confidence: float
    model_version: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0 or math.isnan(self.confidence):
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")
        for a in self.agents:
            if len(a.p_within) != self.horizon:
                raise ValueError(f"agent {a.agent!r}: p_within has {len(a.p_within)} values, "
                                 f"horizon is {self.horizon}")
            for p in a.p_within:
                if not 0.0 <= p <= 1.0 or math.isnan(p):
                    raise ValueError(f"agent {a.agent!r}: probability {p} outside [0, 1]")

    def get(self, agent: str) -> AgentForecast | None:
        for a in self.agents:
            if a.agent == agent:
                return a
        return None


class Predictor(ABC):
    """Predicts which agents a running workflow calls next.

    Contract: ``next_distribution`` returns P(next agent) over the agents known for the state's
    app (summing to 1; an app never seen gets a smoothed prior, never an error);
    ``forecast`` extends it to ``horizon`` steps. Both read only ``state`` (no future).
    ``observe_finished`` updates history statistics online from a finished workflow.
    """

    name: str = "predictor"

    @abstractmethod
    def next_distribution(self, state: WorkflowState) -> dict[str, float]: ...

    @abstractmethod
    def forecast(self, state: WorkflowState, horizon: int = DEFAULT_HORIZON) -> Forecast: ...

    def observe_finished(self, state: WorkflowState) -> None:  # noqa: B027 - optional hook
        """Online update from a finished workflow (default: nothing to learn)."""
