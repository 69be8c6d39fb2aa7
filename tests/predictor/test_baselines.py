"""Baselines and the registry: exact next distributions and forecasts on tiny traces."""

from __future__ import annotations

import numpy as np
import pytest
from predictor_builders import make_workflow

from pbkv.predictor.examples import examples, finished_state, state_at
from pbkv.predictor.registry import PREDICTORS
from pbkv.registry import UnknownNameError

TRAIN = [
    make_workflow("w1", "app", ["A", "B", "C", "A", "B"]),
    make_workflow("w2", "app", ["A", "B", "A", "B", "C"]),
]


def test_registry_names_and_unknown_name_lists_known():
    for name in ("frequency", "markov1", "static-graph", "oracle", "fused"):
        assert name in PREDICTORS
    with pytest.raises(UnknownNameError, match="known: .*frequency.*markov1"):
        PREDICTORS.create("nope", workflows=TRAIN)


def test_frequency_is_smoothed_counts():
    p = PREDICTORS.create("frequency", workflows=TRAIN).next_distribution(state_at(TRAIN[0], 2))
    # counts A=4, B=4, C=2; alpha=0.5 over 3 agents -> (c + .5) / 11.5
    assert p == pytest.approx({"A": 4.5 / 11.5, "B": 4.5 / 11.5, "C": 2.5 / 11.5})


def test_markov1_backs_off_to_frequency():
    pred = PREDICTORS.create("markov1", workflows=TRAIN)
    p = pred.next_distribution(state_at(TRAIN[0], 1))  # last agent A: always followed by B
    # c(A -> B) = 4, beta=2: (4 + 2 * prior_B) / 6
    assert p["B"] == pytest.approx((4 + 2 * 4.5 / 11.5) / 6)
    assert sum(p.values()) == pytest.approx(1.0)
    assert max(p, key=p.get) == "B"


def test_static_graph_follows_first_run():
    pred = PREDICTORS.create("static-graph", workflows=TRAIN)
    # w2 after A, B, A: first run of app is A B C A B; nearest A at index 3 -> next is B
    p = pred.next_distribution(state_at(TRAIN[1], 3))
    assert max(p, key=p.get) == "B"
    f = pred.forecast(state_at(TRAIN[1], 0), horizon=3)  # schedule A, B, C
    assert f.get("A").p_within[0] == pytest.approx(0.9)  # 1 - epsilon
    assert f.get("C").p_within[1] < 0.2 < 0.9 < f.get("C").p_within[2]


def test_oracle_reads_the_future_exactly():
    pred = PREDICTORS.create("oracle", workflows=TRAIN)
    for ex in examples(TRAIN[1]):
        p = pred.next_distribution(ex.state)
        assert max(p, key=p.get) == ex.targets[0]
    f = pred.forecast(state_at(TRAIN[1], 2), horizon=2)  # future: A, B, C -> A then B
    assert f.get("A").eta_steps == pytest.approx(1.0, abs=1e-3)
    assert f.get("B").eta_steps == pytest.approx(2.0, abs=1e-3)
    assert f.get("C").eta_steps is None


@pytest.mark.parametrize("name", ["frequency", "markov1", "markov", "recency", "static-graph"])
def test_forecast_is_valid_and_monotone(name):
    pred = PREDICTORS.create(name, workflows=TRAIN)
    f = pred.forecast(state_at(TRAIN[0], 3), horizon=4)
    assert {a.agent for a in f.agents} == {"A", "B", "C"}
    for a in f.agents:
        assert list(a.p_within) == sorted(a.p_within)
    assert 0.0 <= f.confidence <= 1.0


def test_unseen_app_and_unseen_agent_get_smoothed_prior():
    pred = PREDICTORS.create("markov1", workflows=TRAIN)
    empty = pred.forecast(state_at(make_workflow("x", "other", ["Z"]), 0))
    assert empty.agents == () and empty.confidence == 0.0
    p = pred.next_distribution(state_at(make_workflow("y", "app", ["A", "Q"]), 2))
    assert set(p) == {"A", "B", "C", "Q"} and p["Q"] > 0
    assert sum(p.values()) == pytest.approx(1.0)


def test_fanout_round_counts_as_one_step():
    wfs = [make_workflow(f"w{i}", "fan", ["P", ("X", "Y"), "S"]) for i in range(10)]
    pred = PREDICTORS.create("markov1", workflows=wfs)
    f = pred.forecast(state_at(wfs[0], 1), horizon=2)  # after P: X and Y run together
    assert f.get("X").p_within[0] > 0.8 and f.get("Y").p_within[0] > 0.8
    assert f.get("S").p_within[1] > 0.8  # S is two rounds away, not three


def test_observe_finished_updates_history_online():
    pred = PREDICTORS.create("markov1", workflows=TRAIN)
    new = make_workflow("w3", "app", ["A", "D"] * 5)
    before = pred.next_distribution(state_at(new, 1)).get("D", 0.0)
    pred.observe_finished(finished_state(new))
    after = pred.next_distribution(state_at(new, 1))["D"]
    assert before == 0.0 and after > 0.45  # A->D 5 times vs A->B 4 times
    assert np.isclose(sum(pred.next_distribution(state_at(new, 1)).values()), 1.0)
