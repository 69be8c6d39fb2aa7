"""The online accuracy's calibration error (ECE of the top P(next)), on small streams with
exact figures."""

from __future__ import annotations

import pytest

from pbkv.cache_manager.accuracy import AccuracyConfig, OnlineAccuracy
from pbkv.predictor.forecast import AgentForecast, Forecast


def forecast(p_top: float) -> Forecast:
    """'a' on top with ``p_top``, 'b' with the rest (horizon 1)."""
    return Forecast(
        "w",
        0,
        1,
        (AgentForecast("a", (p_top,), 1.0), AgentForecast("b", (1.0 - p_top,), None)),
        confidence=p_top,
    )


def test_ece_of_a_small_stream_step_by_step():
    acc = OnlineAccuracy(AccuracyConfig(calibration_window=4, calibration_min_samples=2))
    assert acc.ece is None
    acc.record(forecast(0.9), "a")  # bin 9: conf 0.9, hit 1
    assert acc.ece is None  # fewer than calibration_min_samples
    acc.record(forecast(0.9), "b")  # bin 9: conf 0.9, hits 1/2
    assert acc.ece == pytest.approx(0.4)
    acc.record(forecast(0.65), "a")  # bin 6: |0.65 - 1| = 0.35, weight 1/3
    assert acc.ece == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.35)
    acc.record(forecast(0.65), "a")
    assert acc.ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.35)
    acc.record(forecast(0.65), "a")  # the window keeps 4: the first 0.9 hit leaves
    assert acc.ece == pytest.approx(0.25 * 0.9 + 0.75 * 0.35)


def test_a_calibrated_stream_has_no_calibration_error():
    acc = OnlineAccuracy(AccuracyConfig(calibration_window=100))  # min samples: 100
    for i in range(100):  # 0.75 stated, right 3 times in 4
        assert acc.ece is None
        acc.record(forecast(0.75), "a" if i % 4 else "b")
    assert acc.ece == pytest.approx(0.0)


def test_calibration_window_must_be_positive():
    with pytest.raises(ValueError, match="calibration_window"):
        AccuracyConfig(calibration_window=0)
    with pytest.raises(ValueError, match="calibration_min_samples"):
        AccuracyConfig(calibration_min_samples=0)
