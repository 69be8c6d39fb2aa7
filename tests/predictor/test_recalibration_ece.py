"""The platt map on known miscalibrated streams: its held-out ECE falls below a bound computed
from the data (what a perfectly calibrated model shows on the same outcomes, plus how far the
ECE of ``window`` outcomes of that model can stray), and its lag term tracks a model that
improves along the stream."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pytest

from pbkv.predictor.recalibration import OnlineRecalibrator, RecalibrationConfig
from pbkv.training.evaluate import expected_calibration_error as ece

STREAM, HELD_OUT, SEEDS = 400, 2000, range(8)
Truth = Callable[[float, int], float]  # (stated p, outcome number) -> P(right)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def overconfident(p: float, i: int) -> float:
    return _sigmoid(-0.4 + 0.5 * _logit(p))


def improving(p: float, i: int) -> float:
    """Overconfident, and more so the older the model (its lead shrinks with log outcomes):
    at the stream's end as ``overconfident``."""
    older = 1.0 - math.log1p(i / 20) / math.log1p(STREAM / 20)
    return _sigmoid(-0.4 + 0.5 * _logit(p) - 1.5 * older)


def held_out_ece(truth: Truth, config: RecalibrationConfig, seed: int) -> tuple[float, ...]:
    """(raw ECE, the map's ECE, the bound) on HELD_OUT forecasts of the model at the stream's
    end, after STREAM outcomes."""
    rng = random.Random(seed)
    recal = OnlineRecalibrator(config)
    for i in range(STREAM):
        p = rng.uniform(0.3, 0.98)
        recal.observe("app", p, rng.random() < truth(p, i))
    stated = np.array([rng.uniform(0.3, 0.98) for _ in range(HELD_OUT)])
    true = np.array([truth(p, STREAM) for p in stated])
    hits = (np.array([rng.random() for _ in range(HELD_OUT)]) < true).astype(float)
    calibrated = np.array([recal.calibrated("app", p) for p in stated])
    draws = np.random.default_rng(seed)
    few = true[:STREAM]
    stray = [ece(few, (draws.random(STREAM) < few).astype(float)) for _ in range(200)]
    bound = ece(true, hits) + float(np.percentile(stray, 95))
    return ece(stated, hits), ece(calibrated, hits), bound


def test_the_map_brings_an_overconfident_stream_below_the_bound():
    for seed in SEEDS:
        raw, mapped, bound = held_out_ece(overconfident, RecalibrationConfig(), seed)
        assert mapped < bound < raw, seed


def test_the_lag_term_tracks_a_model_that_improves():
    with_lag, without = [], []
    for seed in SEEDS:
        raw, mapped, bound = held_out_ece(improving, RecalibrationConfig(), seed)
        assert mapped < bound < raw, seed
        with_lag.append(mapped)
        without.append(held_out_ece(improving, RecalibrationConfig(lag_scale=0.0), seed)[1])
    # learnt from outcomes of older, worse models, the map without the lag term is too
    # pessimistic about the current one
    assert np.mean(with_lag) < np.mean(without)


def test_the_fit_with_the_lag_term_is_the_penalised_optimum():
    rng = random.Random(5)
    recal = OnlineRecalibrator(RecalibrationConfig(prior_weight=1e8))  # no bin correction
    for i in range(STREAM):
        p = rng.uniform(0.3, 0.98)
        recal.observe("app", p, rng.random() < improving(p, i))
    state = recal._apps["app"]
    for _ in range(10):  # refits: Newton steps from each last fit, until converged
        recal._refit(state)
    a, b, c = state.ab
    z = np.log(state.p / (1.0 - state.p))
    lag = np.log((STREAM + 20.0) / (state.number + 20.0))  # lag_scale 20
    r = 1.0 / (1.0 + np.exp(-(a + b * z + c * lag))) - state.hit
    gradient = (r.sum() + 10.0 * a, r @ z + 10.0 * (b - 1.0), r @ lag + 10.0 * c)
    assert np.abs(gradient).max() < 1e-3
    assert c < 0.0  # older outcomes were right less often than their model's p says
    # read at lag 0: the current model's map, no bin correction
    current = 1.0 / (1.0 + math.exp(-(a + b * _logit(0.9))))
    assert recal.calibrated("app", 0.9) == pytest.approx(current)
