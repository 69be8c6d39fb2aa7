"""Evaluation metrics: exact values on hand-made predictions."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predictor"))
from predictor_builders import make_workflow

from pbkv.predictor.forecast import AgentForecast, Forecast, Predictor
from pbkv.predictor.registry import PREDICTORS
from pbkv.training.evaluate import evaluate, evaluate_all, expected_calibration_error


class Fixed(Predictor):
    """Always P(A) = 0.7, P(B) = 0.3; within-2 probabilities equal to that."""

    name = "fixed"

    def next_distribution(self, state):
        return {"A": 0.7, "B": 0.3}

    def forecast(self, state, horizon=4):
        return Forecast(
            state.workflow_id,
            state.step_index,
            horizon,
            (AgentForecast("A", (0.7,) * horizon, 1.0), AgentForecast("B", (0.3,) * horizon, None)),
            0.5,
        )


def test_metrics_exact_on_a_fixed_predictor():
    wf = make_workflow("w", "app", ["A", "B", "A"])
    m = evaluate(Fixed(), [wf], horizon=2)["all"]
    # rounds: A (hit), B (miss), A (hit)
    assert m.examples == 3
    assert m.top1 == pytest.approx(2 / 3)
    assert m.top3 == 1.0
    assert m.log_loss == pytest.approx(-(2 * math.log(0.7) + math.log(0.3)) / 3)
    assert m.brier == pytest.approx((2 * (0.3**2 + 0.3**2) + (0.7**2 + 0.7**2)) / 3)
    # all three confidences 0.7 (one bin), accuracy 2/3
    assert m.ece == pytest.approx(abs(2 / 3 - 0.7))
    # within-2 futures {A,B}, {A,B}, {A}; predicted (>= .5) {A} each time -> 3 hits
    assert m.within_recall == pytest.approx(3 / 5)
    assert m.within_precision == pytest.approx(1.0)


def test_ece_bins():
    conf = np.array([0.95, 0.95, 0.15, 0.15])
    correct = np.array([1.0, 1.0, 0.0, 1.0])
    assert expected_calibration_error(conf, correct) == pytest.approx(
        0.5 * 0.05 + 0.5 * abs(0.5 - 0.15)
    )


def test_evaluate_all_reports_model_and_every_baseline():
    train = [make_workflow(f"w{i}", "app", ["A", "B", "C"]) for i in range(5)]
    model = PREDICTORS.create("markov", workflows=train)
    results = evaluate_all(model, train[:2])
    assert set(results) == {"markov", "frequency", "markov1", "recency", "static-graph", "oracle"}
    assert results["oracle"]["all"].top1 == 1.0
    assert results["static-graph"]["app"].top1 == 1.0
