"""The predictor's measured online accuracy, and the fall-back to LRU it drives.

Each forecast is judged once, by the first step that starts after it: top-1 is a hit when the
agent with the highest P(next) is the one that ran; the Brier score is the squared error of the
whole P(next) distribution (0 perfect, 2 worst). Both are averaged over the last ``window``
judged forecasts. The expected calibration error (ECE) compares each forecast's top P(next)
(its stated chance that the top pick is right) with whether it was right, over the last
``calibration_window`` judged forecasts, in equal-width bins of confidence
(``training.evaluate.expected_calibration_error``, as ``pbkv evaluate`` reports it)::

    ECE = sum over bins b of  |b| / n * |mean confidence in b - top-1 accuracy in b|

Fall-back has hysteresis so the policy does not flap::

    accuracy:  ...0.5....0.3 (< fallback_below: LRU) ....0.4.......0.5 (>= recover_at: back)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pbkv.cache_manager.checks import check_ints, check_numbers
from pbkv.predictor.forecast import Forecast
from pbkv.training.evaluate import expected_calibration_error


@dataclass(frozen=True, slots=True)
class AccuracyConfig:
    """When a predictor-driven policy (pbkv) falls back to LRU, and when it returns."""

    fallback_below: float = 0.3  # fall back to LRU when top-1 accuracy drops below this
    recover_at: float = 0.4  # ... and return once it is back at or above this
    window: int = 50  # judged forecasts the accuracy is measured over
    min_samples: int = 20  # no fall-back decision before this many
    calibration_window: int = 500  # judged forecasts the ECE is measured over
    calibration_min_samples: int = 100  # no ECE before this many (too noisy below)

    def __post_init__(self) -> None:
        check_ints(
            self,
            {"window": 1, "min_samples": 1, "calibration_window": 1, "calibration_min_samples": 1},
        )
        check_numbers(self, ("fallback_below", "recover_at"), 0.0, 1.0)
        if self.recover_at < self.fallback_below:
            raise ValueError(
                f"AccuracyConfig.recover_at ({self.recover_at}) must be >= "
                f"fallback_below ({self.fallback_below})"
            )


class OnlineAccuracy:
    def __init__(self, config: AccuracyConfig | None = None) -> None:
        config = config or AccuracyConfig()
        self.min_samples = config.min_samples
        self.fallback_below = config.fallback_below
        self.recover_at = config.recover_at
        self._hits: deque[int] = deque(maxlen=config.window)
        self._brier: deque[float] = deque(maxlen=config.window)
        # (top P(next), hit) of the last calibration_window judged forecasts, for the ECE
        self._calibration: deque[tuple[float, int]] = deque(maxlen=config.calibration_window)
        self._hit_sum = 0
        self._brier_sum = 0.0
        self.fallback = False
        self.judged = 0
        self.calibration_min_samples = config.calibration_min_samples

    def record(self, forecast: Forecast, actual_agent: str) -> None:
        i = forecast.top_index()
        best = forecast.agents[i] if i is not None else None
        hit = int(best is not None and best.agent == actual_agent)
        brier, ran = 0, False  # (the same sum, in one pass)
        for a in forecast.agents:
            is_it = a.agent == actual_agent
            ran = ran or is_it
            brier += (a.p_within[0] - is_it) ** 2
        if not ran:
            brier += 1.0  # the agent that ran got probability 0
        if len(self._hits) == self._hits.maxlen:
            self._hit_sum -= self._hits[0]
            self._brier_sum -= self._brier[0]
        self._hits.append(hit)
        self._brier.append(brier)
        self._calibration.append((best.p_next if best is not None else 0.0, hit))
        self._hit_sum += hit
        self._brier_sum += brier
        self.judged += 1
        self._update_fallback()

    @property
    def samples(self) -> int:
        return len(self._hits)

    @property
    def top1(self) -> float | None:
        return self._hit_sum / len(self._hits) if self._hits else None

    @property
    def brier(self) -> float | None:
        return max(self._brier_sum, 0.0) / len(self._brier) if self._brier else None

    @property
    def ece(self) -> float | None:
        """Expected calibration error of the top P(next) over the calibration window; None
        before ``calibration_min_samples`` judged forecasts."""
        if len(self._calibration) < self.calibration_min_samples:
            return None
        pairs = np.array(self._calibration, dtype=float)
        return expected_calibration_error(pairs[:, 0], pairs[:, 1])

    def _update_fallback(self) -> None:
        acc = self.top1
        if acc is None or self.samples < self.min_samples:
            return
        if not self.fallback and acc < self.fallback_below:
            self.fallback = True
        elif self.fallback and acc >= self.recover_at:
            self.fallback = False
