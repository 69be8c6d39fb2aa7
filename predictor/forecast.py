"""The predictor's boundary types: what it is told (``WorkflowState``) and what it answers
(``Forecast``). The cache manager reads forecasts; it never sees features or models."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import KeysView
from dataclasses import dataclass, field

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


# What a running workflow keeps, so that a step costs the same at step 10 and step 10,000 and
# a workflow's memory is bounded: the last STEP_WINDOW finished steps (predictors read recent
# rounds: features look back at most 16 rounds), and the output text of only the last
# TEXT_WINDOW of them (predictors read the last step's text). A workflow shorter than the
# window is predicted exactly as if everything were kept.
STEP_WINDOW = 128
TEXT_WINDOW = 1


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """Everything known about a workflow before its next step (no field may leak the future).

    ``steps`` are the most recent finished steps: a state built by ``extended`` keeps the last
    ``STEP_WINDOW`` (``steps_before`` counts the older ones) and the ``output_text`` of the
    last ``TEXT_WINDOW``; ``step_index`` counts them all. ``rounds_before`` counts the rounds
    that ended before ``steps`` (a round reaching into them is theirs), so the rounds of the
    whole workflow are ``rounds_before`` plus those of ``steps``."""

    workflow_id: str
    app: str
    task: str = ""
    tenant: str = "default"
    steps: tuple[ObservedStep, ...] = ()
    started_s: float | None = None
    now_s: float | None = None
    steps_before: int = 0  # finished steps no longer in ``steps``
    rounds_before: int = 0  # rounds wholly among those (a round is a run of one parallel group)
    # ``rounds()`` once computed; ``extended`` derives its successor's from it in O(1) steps.
    _rounds: tuple[tuple[str, ...], ...] | None = field(default=None, compare=False, repr=False)
    # ``agents()`` once computed (agent -> its steps in ``steps``), carried the same way.
    _agents: dict[str, int] | None = field(default=None, compare=False, repr=False)

    @property
    def step_index(self) -> int:
        return self.steps_before + len(self.steps)

    def rounds(self) -> tuple[tuple[str, ...], ...]:
        """The agents of ``steps`` grouped into rounds: a step joins the round before it when
        both have the same (non-None) parallel group (``trace.step_groups``' rule). Computed
        once per state; a state built by ``extended`` from one whose rounds are known gets
        them by updating the ends, whatever the window's length."""
        rounds = self._rounds
        if rounds is None:
            rounds = _group_rounds(self.steps)
            object.__setattr__(self, "_rounds", rounds)
        return rounds

    def agents(self) -> KeysView[str]:
        """The distinct agents of ``steps``. Computed once per state; a state built by
        ``extended`` from one whose agents are known gets them by counting the steps that
        joined and left the window, whatever its length."""
        counts = self._agents
        if counts is None:
            counts = {}
            for s in self.steps:
                counts[s.agent] = counts.get(s.agent, 0) + 1
            object.__setattr__(self, "_agents", counts)
        return counts.keys()

    def extended(self, step: ObservedStep) -> WorkflowState:
        """The state after ``step`` finished: O(window) time, whatever the workflow's length."""
        steps, before, rounds = self.steps, self.steps_before, self.rounds_before
        drop = 0
        if len(steps) >= STEP_WINDOW:
            drop = len(steps) - STEP_WINDOW + 1
            rounds += sum(
                1
                for old, nxt in zip(steps[:drop], steps[1 : drop + 1], strict=True)
                if nxt.parallel_group is None or nxt.parallel_group != old.parallel_group
            )
            steps, before = steps[drop:], before + drop
        if len(steps) >= TEXT_WINDOW:
            old = steps[-TEXT_WINDOW]
            if old.output_text is not None:
                steps = (
                    *steps[:-TEXT_WINDOW],
                    _without_text(old),
                    *steps[len(steps) - TEXT_WINDOW + 1 :],
                )
        grouped = self._rounds
        if grouped is not None:
            grouped = _extend_rounds(grouped, drop, steps[-1] if steps else None, step)
        counts = self._agents
        if counts is not None:
            counts = dict(counts)
            for old in self.steps[:drop]:
                left = counts[old.agent] - 1
                if left:
                    counts[old.agent] = left
                else:
                    del counts[old.agent]
            counts[step.agent] = counts.get(step.agent, 0) + 1
        return WorkflowState(
            self.workflow_id,
            self.app,
            self.task,
            self.tenant,
            (*steps, step),
            self.started_s,
            step.end_s if step.end_s is not None else self.now_s,
            before,
            rounds,
            grouped,
            counts,
        )


def _without_text(step: ObservedStep) -> ObservedStep:
    """``step`` without its output text (``dataclasses.replace``, at a fraction of its cost)."""
    return ObservedStep(
        step.agent,
        step.parallel_group,
        None,
        step.output_tokens,
        step.start_s,
        step.end_s,
        step.phase,
    )


def _group_rounds(steps: tuple[ObservedStep, ...]) -> tuple[tuple[str, ...], ...]:
    rounds: list[list[str]] = []
    prev: str | None = None
    for step in steps:
        if step.parallel_group is not None and step.parallel_group == prev:
            rounds[-1].append(step.agent)
        else:
            rounds.append([step.agent])
        prev = step.parallel_group
    return tuple(tuple(r) for r in rounds)


def _extend_rounds(
    rounds: tuple[tuple[str, ...], ...],
    drop: int,
    last: ObservedStep | None,
    step: ObservedStep,
) -> tuple[tuple[str, ...], ...]:
    """``_group_rounds`` of the steps without their first ``drop``, plus ``step`` (``last``:
    the step before it). Dropped steps leave the front: whole rounds, then the first agents
    of a round cut by the window (its rest starts the new first round)."""
    first = 0
    while drop and drop >= len(rounds[first]):
        drop -= len(rounds[first])
        first += 1
    head = rounds[first:]
    if drop:
        head = (head[0][drop:], *head[1:])
    group = step.parallel_group
    if last is not None and group is not None and group == last.parallel_group:
        return (*head[:-1], (*head[-1], step.agent))
    return (*head, (step.agent,))


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
    # The predictor's own top P(next) when the forecast was recalibrated online
    # (``predictor.recalibration``); None: as the predictor gave it.
    raw_top_p: float | None = None

    def __post_init__(self) -> None:
        # (NaN fails every comparison, so ``not 0 <= x <= 1`` catches it too.)
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")
        if self.raw_top_p is not None and not 0.0 <= self.raw_top_p <= 1.0:
            raise ValueError(f"raw_top_p must be in [0, 1], got {self.raw_top_p}")
        horizon = self.horizon
        for a in self.agents:
            if len(a.p_within) != horizon:
                raise ValueError(
                    f"agent {a.agent!r}: p_within has {len(a.p_within)} values, "
                    f"horizon is {horizon}"
                )
            for p in a.p_within:
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"agent {a.agent!r}: probability {p} outside [0, 1]")

    def top_index(self) -> int | None:
        """The index of the agent with the highest P(next) (the first of equals; as
        ``max(..., key=p_next)`` picks), None without agents."""
        best, top = None, 0.0
        for i, a in enumerate(self.agents):
            p = a.p_within[0]
            if best is None or p > top:
                best, top = i, p
        return best

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
