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
            cached = predictor._transitions["app"][1]  # with and without the guest
            assert len(cached) == 2 and all(not t.flags.writeable for t in cached.values())
            predictor.observe_finished(state)  # the app's statistics change: all dropped
            assert "app" not in predictor._transitions
        assert checked == 72


class Uncached(MarkovPredictor):
    """The markov predictor without its forecast cache (the reference)."""

    def _forecast_key(self, rounds, candidates, horizon):
        return None


def test_forecast_cache_hits_equal_computed_forecasts_across_interleaved_workflows() -> None:
    """Many workflows of one app interleaved, some ending (the app's statistics change):
    every forecast from the cache equals the one computed afresh, step by step."""
    train = [workflow(i) for i in range(5)]
    cached = PREDICTORS.create("markov", workflows=train)
    reference = Uncached(HistoryStats.from_json(cached.stats.to_json()), cached.order)
    states = {w: WorkflowState(f"live-{w}", "app") for w in range(8)}
    forecasts = hits = 0
    answered = []
    for t in range(160):
        w = (t * 5) % 8
        s = states[w].step_index
        if s == 6 + w % 3:  # this workflow ends; another starts in its slot
            cached.observe_finished(states[w])
            reference.observe_finished(states[w])
            states[w] = WorkflowState(f"live-{w}-{t}", "app")
            continue
        agent = AGENTS[(s * (w % 3 + 1)) % 4] if t % 11 else f"guest-{w}"
        states[w] = states[w].extended(ObservedStep(agent, "g" if s % 4 == 3 else None))
        fc = cached.forecast(states[w], 4)
        assert fc == reference.forecast(states[w], 4)
        hits += any(fc.agents is agents for agents in answered)  # from the cache
        answered.append(fc.agents)
        forecasts += 1
    assert forecasts == 144 and 0 < hits < forecasts
    assert reference._forecasts == {}


def test_forecast_cache_follows_statistics_changed_through_another_predictor() -> None:
    """Two predictors over one ``HistoryStats``: learning through one changes what the other
    answers at once (the cache keys on the statistics' version, not on its own calls)."""
    train = [workflow(i) for i in range(3)]
    a = PREDICTORS.create("markov", workflows=train)
    b = MarkovPredictor(a.stats, a.order)
    state = WorkflowState("x", "app")
    for agent in ("plan", "code", "code"):
        state = state.extended(ObservedStep(agent))
    before = b.forecast(state, 4)
    assert b.forecast(state, 4) is not before and b.forecast(state, 4) == before
    a.observe_finished(state)  # b is not told
    after = b.forecast(state, 4)
    assert after != before
    assert after == Uncached(HistoryStats.from_json(a.stats.to_json()), 3).forecast(state, 4)
