"""A running workflow's state is bounded (a window of recent steps, the last step's text) and
costs the same per step at any length; below the window, predictions are unchanged."""

from __future__ import annotations

from pbkv.predictor.forecast import STEP_WINDOW, ObservedStep, WorkflowState
from pbkv.predictor.registry import PREDICTORS
from pbkv.trace import Segment, Step, Workflow

AGENTS = ("plan", "code", "test", "review")


def test_a_long_workflow_keeps_a_window_of_steps_and_the_last_text() -> None:
    state = WorkflowState("w", "app")
    for i in range(10_000):
        state = state.extended(ObservedStep(AGENTS[i % 4], output_text=f"out {i}", end_s=i))
    assert (state.step_index, len(state.steps), state.steps_before) == (
        10_000,
        STEP_WINDOW,
        10_000 - STEP_WINDOW,
    )
    assert [s.output_text for s in state.steps[-2:]] == [None, "out 9999"]
    assert state.steps[0].end_s == 10_000 - STEP_WINDOW and state.now_s == 9_999


def test_below_the_window_forecasts_equal_those_from_every_step_kept() -> None:
    train = [
        Workflow(
            f"t{i}",
            "app",
            tuple(Step(AGENTS[(s * (i + 1)) % 4], (Segment("new", 8),), 8) for s in range(12)),
        )
        for i in range(6)
    ]
    predictor = PREDICTORS.create("markov", workflows=train)
    steps = [ObservedStep(AGENTS[(i * 3) % 4], output_text=f"text {i}") for i in range(60)]
    state = WorkflowState("w", "app")
    for n, step in enumerate(steps, start=1):
        state = state.extended(step)
        full = WorkflowState("w", "app", steps=tuple(steps[:n]))
        assert predictor.forecast(state, 4) == predictor.forecast(full, 4)


def test_rounds_carried_through_extended_equal_rounds_regrouped_from_the_window(
    monkeypatch,
) -> None:
    """``extended`` updates the known rounds at their ends (a window of 5 steps here, so the
    front is cut inside fan-out rounds too); they must equal a fresh grouping of the window."""
    import random
    from collections import Counter

    from pbkv.predictor import forecast

    monkeypatch.setattr(forecast, "STEP_WINDOW", 5)
    rng = random.Random(7)
    carried = WorkflowState("w", "app")
    carried.rounds()
    carried.agents()
    lazy = WorkflowState("w", "app")  # rounds never asked for until the end
    for i in range(400):
        group = rng.choice((None, None, "g1", "g2"))
        step = ObservedStep(AGENTS[rng.randrange(4)], group, end_s=float(i))
        carried, lazy = carried.extended(step), lazy.extended(step)
        fresh = WorkflowState("w", "app", steps=carried.steps)
        assert carried.rounds() == fresh.rounds(), i
        # the agents, counted in and out of the window, equal the window's (in first-seen
        # order of the counts, so compared as sets) and no agent is kept at zero steps
        assert set(carried.agents()) == {s.agent for s in carried.steps}, i
        assert carried._agents == dict(Counter(s.agent for s in carried.steps)), i
    assert lazy.rounds() == carried.rounds() and lazy._rounds is not None
    assert lazy._agents is None and set(lazy.agents()) == set(carried.agents())
    assert [len(r) for r in carried.rounds()] and sum(map(len, carried.rounds())) == 5
