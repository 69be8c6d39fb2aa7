"""What a predictor keeps between forecasts (transition matrices per candidate set, rounds
carried by ``WorkflowState.extended``) never changes a forecast: a long-lived predictor that
keeps learning online answers exactly like one built fresh from the same statistics."""

from __future__ import annotations

from pbkv.predictor.baselines import MarkovPredictor, RecencyPredictor
from pbkv.predictor.forecast import ObservedStep, WorkflowState
from pbkv.predictor.history import HistoryStats
from pbkv.predictor.registry import PREDICTORS
from pbkv.trace import Segment, Step, Workflow

AGENTS = ("plan", "code", "test", "review")


def workflow(i: int, n: int = 10) -> Workflow:
    steps = tuple(Step(AGENTS[(s * (i + 1)) % 4], (Segment("new", 8),), 8) for s in range(n))
    return Workflow(f"t{i}", "app", steps)


def fresh(predictor):
    """The same kind of predictor over a copy of ``predictor``'s statistics (no caches)."""
    stats = HistoryStats.from_json(predictor.stats.to_json())
    if isinstance(predictor, MarkovPredictor):
        return MarkovPredictor(stats, predictor.order)
    return type(predictor)(stats)


def test_cached_forecasts_equal_fresh_ones_while_learning_online() -> None:
    train = [workflow(i) for i in range(5)]
    markov = PREDICTORS.create("markov", workflows=train)
    recency = RecencyPredictor(HistoryStats.from_json(markov.stats.to_json()))
    for predictor in (markov, recency):
        checked = 0
        for w in range(6):
            state = WorkflowState(f"live-{w}", "app")
            for s in range(12):
                # every third step an agent the app's history has never seen (its own
                # candidate set, so its own cached transition matrix)
                agent = f"guest-{w}" if s % 3 == 2 else AGENTS[(s * (w + 2)) % 4]
                state = state.extended(ObservedStep(agent, "g" if s % 5 == 4 else None))
                assert predictor.forecast(state, 4) == fresh(predictor).forecast(state, 4)
                checked += 1
            cached = predictor._transitions["app"]  # with and without the guest
            assert len(cached) == 2 and all(not t.flags.writeable for t in cached.values())
            predictor.observe_finished(state)  # the app's statistics change: all dropped
            assert "app" not in predictor._transitions
        assert checked == 72
