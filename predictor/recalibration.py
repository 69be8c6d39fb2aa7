"""Online recalibration of the top P(next) from observed outcomes (issue 12, item 6).

A model calibrated offline (``fusion.TopCalibration``) is calibrated for the data it was
trained on; on a shifted workload (another app, another collection) its stated top P(next)
drifts from how often the top pick is right. The cache manager judges every forecast by the
step that follows it, so it can learn the map back: per app, from the last ``window`` judged
forecasts (raw top probability p_i, hit y_i), with ``bins`` equal-width bins.

``map = "platt"`` (default): a logistic map of the log-odds, pulled to the identity, then a
histogram correction of what it leaves::

    z(p)            = logit(clip(p))
    (a, b)          = argmin  sum_i logloss(y_i, sigmoid(a + b z_i))
                              + platt_prior / 2 * (a**2 + (b - 1)**2)
    q(p)            = sigmoid(a + b z(p))
    bin c of q:     n_c forecasts, h_c of them right, their q summing to s_c
    calibrated(p)   = q(p) + (h_c - s_c) / (n_c + prior_weight)     clipped to [P_MIN, P_MAX]

The prior counts as ``platt_prior`` pseudo-forecasts at the identity, so a few outcomes move
the map a little; the bin term, shrunk by ``prior_weight`` pseudo-forecasts, fixes what two
parameters cannot (the top P(next) of the fused model is not monotone in its hit rate on
every shift). (a, b) are refitted when the map is read after new outcomes: damped Newton
steps (at most ``NEWTON_STEPS``, step length capped at 1) from the last fit.

``map = "histogram"`` (the map before this one, kept for comparison in
``pbkv bench calibration``): bins of the raw p, each shrunk toward the pooled gap::

    gap             = (H - S) / (N + prior_weight)   all N outcomes, H right, p summing to S
    calibrated(p)   = (h_b + prior_weight * (p + gap)) / (n_b + prior_weight)

With no outcomes either map is the identity. ``apply`` rewrites a forecast: the top agent's
P(next) becomes the calibrated figure, the other agents' P(next) are scaled to keep the sum
(``rescaled``), P(within h) never below P(next), and the confidence (what the scorer's
conservative gate trusts) is scaled by calibrated / raw: for the fused model, whose
confidence is its top P(next), it becomes the calibrated figure. The raw figure is kept in
``Forecast.raw_top_p`` for ``observe``.

Bounded: ``window`` outcomes per app, at most ``max_apps`` apps (the least recently observed
app is forgotten first); a refit is O(window). Mechanism only: the caller decides what is
observed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from pbkv.predictor.forecast import AgentForecast, Forecast

P_MIN, P_MAX = 1e-3, 1.0 - 1e-3
MAPS = ("platt", "histogram")
NEWTON_STEPS = 4  # per refit, from the last fit (usually 1-2 suffice)


@dataclass(frozen=True, slots=True)
class RecalibrationConfig:
    """How the top P(next) is recalibrated online (``enabled=False``: never)."""

    enabled: bool = True  # False: forecasts pass unchanged
    map: str = "platt"  # "platt": log-odds map + bin correction; "histogram": the older map
    window: int = 400  # judged forecasts per app the map is learnt from
    bins: int = 10  # equal-width bins of the corrected (platt) or raw (histogram) probability
    prior_weight: float = 10.0  # pseudo-forecasts per bin at no bin correction
    platt_prior: float = 10.0  # pseudo-forecasts holding the log-odds map at the identity
    max_apps: int = 1_024  # apps tracked at once

    def __post_init__(self) -> None:
        if self.map not in MAPS:
            raise ValueError(f"RecalibrationConfig.map must be one of {MAPS}, got {self.map!r}")
        for name in ("window", "bins", "max_apps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"RecalibrationConfig.{name} must be an integer >= 1, got {value!r}"
                )
        for name in ("prior_weight", "platt_prior"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and 0.0 <= value < 1e9
            ):
                raise ValueError(f"RecalibrationConfig.{name} must be a number >= 0, got {value!r}")


def _logit(p: np.ndarray | float):
    p = np.clip(p, P_MIN, P_MAX)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray | float):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def rescaled(p: float, top: float, new: float) -> float:
    """What ``apply`` makes of a non-top agent's P(next) ``p`` when the top moves from
    ``top`` to ``new``: scaled to keep the sum, never above the top."""
    rest = (1.0 - new) / (1.0 - top) if top < 1.0 else 0.0
    return min(new, p * rest)


class _AppOutcomes:
    """One app's last ``window`` outcomes (a ring) and the map fitted on them."""

    __slots__ = ("p", "hit", "size", "next", "ab", "fit")

    def __init__(self, window: int) -> None:
        self.p = np.zeros(window)
        self.hit = np.zeros(window)
        self.size = 0  # outcomes kept (<= window)
        self.next = 0  # ring position of the next outcome
        self.ab = (0.0, 1.0)  # the log-odds map's (a, b): the identity until fitted
        self.fit: tuple | None = None  # (a, b, count, right, stated) per bin; None: stale

    def add(self, p: float, hit: bool) -> None:
        self.p[self.next] = p
        self.hit[self.next] = float(hit)
        self.next = (self.next + 1) % len(self.p)
        self.size = min(self.size + 1, len(self.p))
        self.fit = None


class OnlineRecalibrator:
    def __init__(self, config: RecalibrationConfig | None = None) -> None:
        self.config = config or RecalibrationConfig()
        self._apps: OrderedDict[str, _AppOutcomes] = OrderedDict()
        self.observed = 0

    def _bins_of(self, q):
        return np.minimum((np.asarray(q) * self.config.bins).astype(int), self.config.bins - 1)

    def _refit(self, state: _AppOutcomes) -> tuple:
        c = self.config
        p, y = state.p[: state.size], state.hit[: state.size]
        a, b = state.ab
        if c.map == "platt":
            z, lam = _logit(p), c.platt_prior
            for _ in range(NEWTON_STEPS):
                r = _sigmoid(a + b * z) - y
                w = (r + y) * (1.0 - r - y)  # q (1 - q)
                g0, g1 = r.sum() + lam * a, (r * z).sum() + lam * (b - 1.0)
                h00, h01, h11 = w.sum() + lam, (w * z).sum(), (w * z * z).sum() + lam
                det = h00 * h11 - h01 * h01
                if det <= 0.0:
                    break
                d0, d1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
                scale = max(1.0, abs(d0), abs(d1))  # damped: a step moves (a, b) by <= 1
                a, b = a - d0 / scale, b - d1 / scale
                if max(abs(d0), abs(d1)) < 1e-6:
                    break
            state.ab = (a, b)
            q = _sigmoid(a + b * z)
        else:
            q = p
        idx = self._bins_of(q)
        n = c.bins
        state.fit = (
            a,
            b,
            np.bincount(idx, minlength=n),
            np.bincount(idx, weights=y, minlength=n),
            np.bincount(idx, weights=q, minlength=n),
        )
        return state.fit

    def calibrated(self, app: str, p: float) -> float:
        """The calibrated value of a raw top probability ``p`` for ``app``."""
        state = self._apps.get(app)
        if state is None or not self.config.enabled or state.size == 0:
            return p
        a, b, count, right, stated = state.fit or self._refit(state)
        m = self.config.prior_weight
        if self.config.map == "platt":
            q = float(_sigmoid(a + b * _logit(p)))
            c = int(self._bins_of(q))
            value = q + (right[c] - stated[c]) / (count[c] + m)
        else:
            c = int(self._bins_of(p))
            gap = (right.sum() - stated.sum()) / (state.size + m)  # every bin's gap, shrunk
            value = (right[c] + m * (p + gap)) / (count[c] + m)
        return min(P_MAX, max(P_MIN, float(value)))

    def observe(self, app: str, raw_top_p: float, hit: bool) -> None:
        """One judged forecast: its raw top probability and whether the top pick ran."""
        if not self.config.enabled:
            return
        state = self._apps.get(app)
        if state is None:
            state = self._apps[app] = _AppOutcomes(self.config.window)
            if len(self._apps) > self.config.max_apps:
                self._apps.popitem(last=False)
        else:
            self._apps.move_to_end(app)
        state.add(raw_top_p, hit)
        self.observed += 1

    def observe_forecast(self, app: str, forecast: Forecast, agent: str) -> None:
        """Judge ``forecast`` (as ``apply`` returned it) by the agent that ran next."""
        if not forecast.agents:
            return
        best = max(forecast.agents, key=lambda a: a.p_next)
        raw = forecast.raw_top_p if forecast.raw_top_p is not None else best.p_next
        self.observe(app, raw, best.agent == agent)

    def apply(self, app: str, forecast: Forecast) -> Forecast:
        """``forecast`` with its top P(next) and confidence calibrated (see the module)."""
        if not self.config.enabled or not forecast.agents or forecast.raw_top_p is not None:
            return forecast
        i = max(range(len(forecast.agents)), key=lambda k: forecast.agents[k].p_next)
        top = forecast.agents[i].p_next
        new = self.calibrated(app, top)
        if new == top:  # nothing learnt for this app (yet): as the predictor said
            return replace(forecast, raw_top_p=top)
        agents = []
        for k, a in enumerate(forecast.agents):
            p0 = new if k == i else rescaled(a.p_next, top, new)
            within = (p0, *(min(1.0, max(p, p0)) for p in a.p_within[1:]))
            agents.append(AgentForecast(a.agent, within, a.eta_steps))
        confidence = min(1.0, forecast.confidence * new / top) if top > 0 else new
        return replace(forecast, agents=tuple(agents), confidence=confidence, raw_top_p=top)

    def check_integrity(self) -> None:
        """The bounds hold, and a cached fit counts exactly the kept outcomes."""
        assert len(self._apps) <= self.config.max_apps
        for app, state in self._apps.items():
            assert 0 <= state.size <= self.config.window == len(state.p), app
            assert math.isfinite(state.ab[0]) and math.isfinite(state.ab[1]), app
            if state.fit is not None:
                _, _, count, right, _ = state.fit
                assert count.sum() == state.size, app
                assert right.sum() == state.hit[: state.size].sum(), app
