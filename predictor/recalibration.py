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
every shift). (a, b) are refitted at an app's first outcome and then every
``REFIT_EVERY`` outcomes: at most ``NEWTON_STEPS`` damped Newton steps (a step moves (a, b)
by at most 1) from the last fit, so a refit is O(window) and the fit converges over a few
refits; between refits an outcome only updates its bin's sums (O(1)).

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
app is forgotten first). Mechanism only: the caller decides what is
observed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pbkv.predictor.forecast import AgentForecast, Forecast

P_MIN, P_MAX = 1e-3, 1.0 - 1e-3
MAPS = ("platt", "histogram")
NEWTON_STEPS = 2  # per refit, from the last fit (the fit moves little between refits)
REFIT_EVERY = 8  # outcomes of an app between refits (an app's first outcome refits too)


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


def _q(ab: tuple[float, float], p: float) -> float:
    """The log-odds map of one probability (scalar: no numpy call on the per-step path)."""
    p = min(P_MAX, max(P_MIN, p))
    z = ab[0] + ab[1] * math.log(p / (1.0 - p))
    return 1.0 / (1.0 + math.exp(-min(30.0, max(-30.0, z))))


def rescaled(p: float, top: float, new: float) -> float:
    """What ``apply`` makes of a non-top agent's P(next) ``p`` when the top moves from
    ``top`` to ``new``: scaled to keep the sum, never above the top."""
    rest = (1.0 - new) / (1.0 - top) if top < 1.0 else 0.0
    return min(new, p * rest)


class _AppOutcomes:
    """One app's last ``window`` outcomes (a ring), the log-odds map fitted on them and, per
    bin of the mapped probability, the count, hits and mapped sum (kept up to date as outcomes
    come and go; recomputed at each refit)."""

    __slots__ = ("p", "hit", "size", "next", "ab", "count", "right", "stated", "since_fit")

    def __init__(self, window: int, bins: int) -> None:
        self.p = np.zeros(window)
        self.hit = np.zeros(window)
        self.size = 0  # outcomes kept (<= window)
        self.next = 0  # ring position of the next outcome
        self.ab = (0.0, 1.0)  # the log-odds map's (a, b): the identity until fitted
        self.count = [0] * bins
        self.right = [0.0] * bins
        self.stated = [0.0] * bins
        self.since_fit = 0  # outcomes added since the last refit


class OnlineRecalibrator:
    def __init__(self, config: RecalibrationConfig | None = None) -> None:
        self.config = config or RecalibrationConfig()
        self._apps: OrderedDict[str, _AppOutcomes] = OrderedDict()
        self.observed = 0

    def _mapped(self, state: _AppOutcomes, p: float) -> float:
        return _q(state.ab, p) if self.config.map == "platt" else p

    def _bin(self, q: float) -> int:
        return min(int(q * self.config.bins), self.config.bins - 1)

    def _count(self, state: _AppOutcomes, p: float, hit: float, sign: int) -> None:
        q = self._mapped(state, p)
        b = self._bin(q)
        state.count[b] += sign
        state.right[b] += sign * hit
        state.stated[b] += sign * q

    def _refit(self, state: _AppOutcomes) -> None:
        """Newton steps for (a, b) from the last fit (platt), then the bin sums anew."""
        c = self.config
        p, y = state.p[: state.size], state.hit[: state.size]
        if c.map == "platt":
            a, b = state.ab
            z, lam = _logit(p), c.platt_prior
            for _ in range(NEWTON_STEPS):
                q = _sigmoid(a + b * z)
                r, w = q - y, q * (1.0 - q)
                g0, g1 = r.sum() + lam * a, (r * z).sum() + lam * (b - 1.0)
                h00, h01, h11 = w.sum() + lam, (w * z).sum(), (w * z * z).sum() + lam
                det = h00 * h11 - h01 * h01
                if det <= 0.0:
                    break
                d0, d1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
                scale = max(1.0, abs(d0), abs(d1))  # damped: a step moves (a, b) by <= 1
                a, b = float(a - d0 / scale), float(b - d1 / scale)
                if max(abs(d0), abs(d1)) < 1e-6:
                    break
            state.ab = (a, b)
            q = _sigmoid(a + b * z)
        else:
            q = p
        idx = np.minimum((q * c.bins).astype(int), c.bins - 1)
        state.count = np.bincount(idx, minlength=c.bins).tolist()
        state.right = np.bincount(idx, weights=y, minlength=c.bins).tolist()
        state.stated = np.bincount(idx, weights=q, minlength=c.bins).tolist()
        state.since_fit = 0

    def calibrated(self, app: str, p: float) -> float:
        """The calibrated value of a raw top probability ``p`` for ``app``."""
        state = self._apps.get(app)
        if state is None or not self.config.enabled or state.size == 0:
            return p
        m = self.config.prior_weight
        if self.config.map == "platt":
            q = _q(state.ab, p)
            c = self._bin(q)
            value = q + (state.right[c] - state.stated[c]) / (state.count[c] + m)
        else:
            c = self._bin(p)
            gap = (sum(state.right) - sum(state.stated)) / (state.size + m)  # shrunk
            value = (state.right[c] + m * (p + gap)) / (state.count[c] + m)
        return min(P_MAX, max(P_MIN, value))

    def observe(self, app: str, raw_top_p: float, hit: bool) -> None:
        """One judged forecast: its raw top probability and whether the top pick ran (O(1);
        every ``REFIT_EVERY``-th outcome of an app, and its first, O(window): a refit)."""
        if not self.config.enabled:
            return
        state = self._apps.get(app)
        if state is None:
            state = self._apps[app] = _AppOutcomes(self.config.window, self.config.bins)
            if len(self._apps) > self.config.max_apps:
                self._apps.popitem(last=False)
        else:
            self._apps.move_to_end(app)
        window = len(state.p)
        if state.size == window:  # the oldest outcome leaves
            self._count(state, float(state.p[state.next]), float(state.hit[state.next]), -1)
        state.p[state.next], state.hit[state.next] = raw_top_p, float(hit)
        state.next = (state.next + 1) % window
        state.size = min(state.size + 1, window)
        self._count(state, raw_top_p, float(hit), 1)
        state.since_fit += 1
        if state.since_fit >= REFIT_EVERY or state.size == 1:
            self._refit(state)
        self.observed += 1

    def observe_forecast(self, app: str, forecast: Forecast, agent: str) -> None:
        """Judge ``forecast`` (as ``apply`` returned it) by the agent that ran next."""
        i = forecast.top_index()
        if i is None:
            return
        best = forecast.agents[i]
        raw = forecast.raw_top_p if forecast.raw_top_p is not None else best.p_within[0]
        self.observe(app, raw, best.agent == agent)

    def apply(self, app: str, forecast: Forecast) -> Forecast:
        """``forecast`` with its top P(next) and confidence calibrated (see the module)."""
        if not self.config.enabled or not forecast.agents or forecast.raw_top_p is not None:
            return forecast
        i = forecast.top_index()
        top = forecast.agents[i].p_within[0]
        new = self.calibrated(app, top)
        f = forecast
        if new == top:  # nothing learnt for this app (yet): as the predictor said
            return Forecast(
                f.workflow_id, f.step_index, f.horizon, f.agents, f.confidence, f.model_version, top
            )
        agents = []
        for k, a in enumerate(f.agents):
            ps = a.p_within
            p0 = new if k == i else rescaled(ps[0], top, new)
            # min(1, max(p, p0)) for the later horizons, written out (the same values)
            within = [p0]
            for p in ps[1:]:
                if p0 > p:
                    p = p0
                within.append(p if p < 1.0 else 1.0)
            agents.append(AgentForecast(a.agent, tuple(within), a.eta_steps))
        confidence = min(1.0, f.confidence * new / top) if top > 0 else new
        return Forecast(
            f.workflow_id, f.step_index, f.horizon, tuple(agents), confidence, f.model_version, top
        )

    def check_integrity(self) -> None:
        """The bounds hold, and each app's bin sums are those of its kept outcomes under its
        current map."""
        assert len(self._apps) <= self.config.max_apps
        for app, state in self._apps.items():
            assert 0 <= state.size <= self.config.window == len(state.p), app
            assert math.isfinite(state.ab[0]) and math.isfinite(state.ab[1]), app
            assert 0 <= state.since_fit < REFIT_EVERY, app
            qs = [self._mapped(state, float(p)) for p in state.p[: state.size]]
            outcomes = list(zip(qs, state.hit[: state.size], strict=True))
            for b in range(self.config.bins):
                kept = [(q, h) for q, h in outcomes if self._bin(q) == b]
                assert state.count[b] == len(kept), (app, b)
                assert abs(state.right[b] - sum(h for _, h in kept)) < 1e-6, (app, b)
                assert abs(state.stated[b] - sum(q for q, _ in kept)) < 1e-6, (app, b)
