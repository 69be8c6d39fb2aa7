"""Online recalibration of the top P(next) from observed outcomes (issue 12, item 6).

A model calibrated offline (``fusion.TopCalibration``) is calibrated for the data it was
trained on; on a shifted workload (another app, another collection) its stated top P(next)
drifts from how often the top pick is right. The cache manager judges every forecast by the
step that follows it, so it can learn the map back: per app, from the last ``window`` judged
forecasts (raw top probability p_i, hit y_i), with ``bins`` equal-width bins.

``map = "platt"`` (default): a logistic map of the log-odds with a lag term, pulled to the
identity, then a histogram correction of what it leaves::

    z(p)            = logit(clip(p))
    lag_i           = log((t + s) / (i + s))    t: the app's outcomes so far, i: outcome i's
                                                number, s: lag_scale (0: lag_i = 0)
    (a, b, c)       = argmin  sum_i logloss(y_i, sigmoid(a + b z_i + c lag_i))
                              + platt_prior / 2 * (a**2 + (b - 1)**2 + c**2)
    q_i             = sigmoid(a + b z_i + c lag_i)      (what the map made of outcome i)
    bin k of q_i:   n_k outcomes, h_k of them right, their q_i summing to s_k
    q(p)            = sigmoid(a + b z(p))               (lag 0: the current model)
    calibrated(p)   = q(p) + (h_k - s_k) / (n_k + prior_weight), k the bin of q(p),
                      clipped to [P_MIN, P_MAX]

Why the lag term: the predictor learns online (each finished workflow goes into its counts),
so the outcomes in the window were produced by older, weaker models than the one now
forecasting, and a map fitted to them as if one model made them all lags behind. The model's
change is roughly linear in the log of what it has learnt, so ``lag_i`` measures how much
older the model behind outcome i is; c learns what that age cost (the prior holds it at 0:
no drift), and the map is evaluated at lag 0. The prior counts as ``platt_prior``
pseudo-forecasts at the identity, so a few outcomes move the map a little; the bin term,
shrunk by ``prior_weight`` pseudo-forecasts, fixes what three parameters cannot (the top
P(next) of the fused model is not monotone in its hit rate on every shift).

The map is fixed between refits: ``calibrated`` is a few float operations, ``observe`` writes
one ring slot. A refit (at most ``NEWTON_STEPS`` damped Newton steps from the last fit, then
the bin correction; O(window) numpy) runs at every outcome while an app has fewer than 8, then
every size / 8 outcomes, at most every ``refit_every`` (32).

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

from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import AgentForecast, Forecast

P_MIN, P_MAX = 1e-3, 1.0 - 1e-3
MAPS = ("platt", "histogram")
NEWTON_STEPS = 8  # per refit, from the last fit, until a step is below NEWTON_TOL
NEWTON_TOL = 1e-4  # (a, b, c) this close to the optimum: on the ECE, nothing
HISTOGRAM_REFIT_EVERY = 8  # histogram map: outcomes between recounts of its bin sums
RECENT_RESCALED = 1_024  # apply: recalibrated agents remembered (then forgotten at once)


@dataclass(frozen=True, slots=True)
class RecalibrationConfig:
    """How the top P(next) is recalibrated online (``enabled=False``: never)."""

    enabled: bool = True  # False: forecasts pass unchanged
    map: str = "platt"  # "platt": log-odds map with a lag term + bin correction; "histogram": older
    window: int = 400  # judged forecasts per app the map is learnt from
    bins: int = 10  # equal-width bins of the corrected (platt) or raw (histogram) probability
    prior_weight: float = 10.0  # pseudo-forecasts per bin at no bin correction
    platt_prior: float = 10.0  # pseudo-forecasts holding the log-odds map at the identity
    lag_scale: float = 20.0  # platt: outcomes s in the lag term log((t + s) / (i + s)); 0: none
    refit_every: int = 32  # platt: outcomes of an app between refits, at most (fewer early)
    max_apps: int = 1_024  # apps tracked at once

    def __post_init__(self) -> None:
        if self.map not in MAPS:
            raise ValueError(f"RecalibrationConfig.map must be one of {MAPS}, got {self.map!r}")
        for name in ("window", "bins", "refit_every", "max_apps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"RecalibrationConfig.{name} must be an integer >= 1, got {value!r}"
                )
        for name in ("prior_weight", "platt_prior", "lag_scale"):
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


def _q(ab: tuple[float, ...], p: float) -> float:
    """The log-odds map of one probability for the current model (lag 0; scalar: no numpy
    call on the per-step path)."""
    p = min(P_MAX, max(P_MIN, p))
    z = ab[0] + ab[1] * math.log(p / (1.0 - p))
    return 1.0 / (1.0 + math.exp(-min(30.0, max(-30.0, z))))


def rescaled(p: float, top: float, new: float) -> float:
    """What ``apply`` makes of a non-top agent's P(next) ``p`` when the top moves from
    ``top`` to ``new``: scaled to keep the sum, never above the top."""
    rest = (1.0 - new) / (1.0 - top) if top < 1.0 else 0.0
    return min(new, p * rest)


def _bin_index(q: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((q * bins).astype(int), bins - 1)


class _AppOutcomes:
    """One app's last ``window`` outcomes (a ring: raw p, hit, the app's outcome number) and
    the map learnt from them: platt's (a, b, c) and per-bin correction, refitted every
    ``refit_every`` outcomes and fixed in between; the histogram map's per-bin count, hits
    and stated sum, kept up to date as outcomes come and go."""

    __slots__ = (
        "p", "hit", "number", "size", "next", "seen", "ab", "correction",
        "count", "right", "stated", "since_fit",
    )  # fmt: skip

    def __init__(self, window: int, bins: int) -> None:
        self.p = np.zeros(window)
        self.hit = np.zeros(window)
        self.number = np.zeros(window)  # the app's outcome number of each kept outcome
        self.size = 0  # outcomes kept (<= window)
        self.next = 0  # ring position of the next outcome
        self.seen = 0  # outcomes of the app so far
        self.ab = (0.0, 1.0, 0.0)  # platt (a, b, c): the identity until fitted
        self.correction = [0.0] * bins  # platt: per bin of q, (h - s) / (n + prior_weight)
        self.count = [0] * bins  # histogram map: per bin of the raw p
        self.right = [0.0] * bins
        self.stated = [0.0] * bins
        self.since_fit = 0  # outcomes added since the last refit


def _newton(abc: tuple[float, ...], z, lag, y, prior: float) -> tuple[float, ...]:
    """The penalised logistic fit of y on (1, z, lag), prior (0, 1, 0) with weight ``prior``,
    from ``abc``: damped Newton steps (one moves a coefficient by at most 1). The gradient and
    Hessian are two matrix products, the 3 x 3 solve is by cofactors in floats: a refit's cost
    is its numpy calls."""
    features = np.stack((np.ones_like(z), z, lag))
    a, b, c = abc
    for _ in range(NEWTON_STEPS):
        q = _sigmoid(np.dot((a, b, c), features))
        r = q - y
        (g0, g1, g2), hess = (features @ r).tolist(), ((features * (q * (1.0 - q))) @ features.T)
        g0, g1, g2 = g0 + prior * a, g1 + prior * (b - 1.0), g2 + prior * c
        (h00, h01, h02), (_, h11, h12), (_, _, h22) = hess.tolist()
        h00, h11, h22 = h00 + prior, h11 + prior, h22 + prior
        c00, c01, c02 = h11 * h22 - h12 * h12, h02 * h12 - h01 * h22, h01 * h12 - h02 * h11
        det = h00 * c00 + h01 * c01 + h02 * c02
        if not det > 0.0:  # singular (no prior, one kind of outcome): keep the last fit
            break
        c11, c12, c22 = h00 * h22 - h02 * h02, h01 * h02 - h00 * h12, h00 * h11 - h01 * h01
        d0 = (c00 * g0 + c01 * g1 + c02 * g2) / det
        d1 = (c01 * g0 + c11 * g1 + c12 * g2) / det
        d2 = (c02 * g0 + c12 * g1 + c22 * g2) / det
        largest = max(abs(d0), abs(d1), abs(d2))
        scale = max(1.0, largest)
        a, b, c = a - d0 / scale, b - d1 / scale, c - d2 / scale
        if largest < NEWTON_TOL:
            break
    return (a, b, c)


class OnlineRecalibrator:
    def __init__(self, config: RecalibrationConfig | None = None) -> None:
        self.config = config or RecalibrationConfig()
        self._apps: OrderedDict[str, _AppOutcomes] = OrderedDict()
        self.observed = 0
        # the predictor's agents, (new top, confidence) -> (rescaled agents, confidence)
        self._recent: IdentityMemo[tuple[tuple[AgentForecast, ...], float]] = IdentityMemo(
            RECENT_RESCALED
        )

    def _bin(self, q: float) -> int:
        return min(int(q * self.config.bins), self.config.bins - 1)

    def _count(self, state: _AppOutcomes, p: float, hit: float, sign: int) -> None:
        b = self._bin(p)
        state.count[b] += sign
        state.right[b] += sign * hit
        state.stated[b] += sign * p

    def _lag(self, state: _AppOutcomes) -> np.ndarray:
        """Per kept outcome: how much older the model that made it is, log((t + s) / (i + s))
        (t: the app's outcomes so far, i: the outcome's number, s: ``lag_scale``)."""
        s = self.config.lag_scale
        if s == 0.0:
            return np.zeros(state.size)
        return np.log((state.seen + s) / (state.number[: state.size] + s))

    def _refit(self, state: _AppOutcomes) -> None:
        """platt: Newton steps for (a, b, c) from the last fit, then the bin correction anew;
        histogram: the bin sums anew."""
        c = self.config
        p, y = state.p[: state.size], state.hit[: state.size]
        state.since_fit = 0
        if c.map == "histogram":
            idx = _bin_index(p, c.bins)
            state.count = np.bincount(idx, minlength=c.bins).tolist()
            state.right = np.bincount(idx, weights=y, minlength=c.bins).tolist()
            state.stated = np.bincount(idx, weights=p, minlength=c.bins).tolist()
            return
        z, lag = _logit(p), self._lag(state)
        state.ab = _newton(state.ab, z, lag, y, c.platt_prior)
        a, b, slope = state.ab
        q = _sigmoid(a + b * z + slope * lag)  # what the map made of each at its model's age
        idx = _bin_index(q, c.bins)
        n = np.bincount(idx, minlength=c.bins)
        h = np.bincount(idx, weights=y, minlength=c.bins)
        s = np.bincount(idx, weights=q, minlength=c.bins)
        state.correction = ((h - s) / (n + c.prior_weight)).tolist()

    def calibrated(self, app: str, p: float) -> float:
        """The calibrated value of a raw top probability ``p`` for ``app``."""
        state = self._apps.get(app)
        if state is None or not self.config.enabled or state.size == 0:
            return p
        if self.config.map == "platt":
            q = _q(state.ab, p)
            value = q + state.correction[self._bin(q)]
        else:
            m = self.config.prior_weight
            c = self._bin(p)
            gap = (sum(state.right) - sum(state.stated)) / (state.size + m)  # shrunk
            value = (state.right[c] + m * (p + gap)) / (state.count[c] + m)
        return min(P_MAX, max(P_MIN, value))

    def _refit_due(self, state: _AppOutcomes) -> bool:
        if self.config.map == "histogram":
            return state.since_fit >= HISTOGRAM_REFIT_EVERY or state.size == 1
        # every outcome while few are kept (the map moves most then), then every size / 8,
        # at most ``refit_every``
        return state.since_fit >= min(self.config.refit_every, 1 + state.size // 8)

    def observe(self, app: str, raw_top_p: float, hit: bool) -> None:
        """One judged forecast: its raw top probability and whether the top pick ran (O(1);
        a refit, O(window), every ``refit_every``-th outcome of an app, more often while it
        has few)."""
        if not self.config.enabled:
            return
        state = self._apps.get(app)
        if state is None:
            state = self._apps[app] = _AppOutcomes(self.config.window, self.config.bins)
            if len(self._apps) > self.config.max_apps:
                self._apps.popitem(last=False)
        else:
            self._apps.move_to_end(app)
        histogram = self.config.map == "histogram"
        window = len(state.p)
        if histogram and state.size == window:  # the oldest outcome leaves
            self._count(state, float(state.p[state.next]), float(state.hit[state.next]), -1)
        i = state.next
        state.p[i], state.hit[i], state.number[i] = raw_top_p, float(hit), state.seen
        state.next = (i + 1) % window
        state.size = min(state.size + 1, window)
        state.seen += 1
        if histogram:
            self._count(state, raw_top_p, float(hit), 1)
        state.since_fit += 1
        if self._refit_due(state):
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
        agents, confidence = self._rescaled(f, i, top, new)
        return Forecast(
            f.workflow_id, f.step_index, f.horizon, agents, confidence, f.model_version, top
        )

    def _rescaled(
        self, f: Forecast, i: int, top: float, new: float
    ) -> tuple[tuple[AgentForecast, ...], float]:
        """``f``'s agents and confidence with the top (agent ``i``) moved from ``top`` to
        ``new``. A pure function of ``f.agents``, ``f.confidence`` and ``new`` (``i`` and
        ``top`` come from the agents), so it is remembered per agents tuple (``IdentityMemo``):
        a predictor that caches its forecasts hands back the same tuple for every workflow
        at the same point, and ``new`` moves only when the map does."""
        hit = self._recent.get(f.agents, (new, f.confidence))
        if hit is not None:
            return hit
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
        return self._recent.put(f.agents, (new, f.confidence), (tuple(agents), confidence))

    def check_integrity(self) -> None:
        """The bounds hold; platt: the map is finite, the outcome numbers are the last ones
        in ring order; histogram: each app's bin sums are those of its kept outcomes."""
        assert len(self._apps) <= self.config.max_apps
        for app, state in self._apps.items():
            assert 0 <= state.size <= self.config.window == len(state.p), app
            assert all(math.isfinite(x) for x in (*state.ab, *state.correction)), app
            assert state.size == min(state.seen, self.config.window), app
            oldest = (state.next - state.size) % len(state.p)
            ring = [(oldest + k) % len(state.p) for k in range(state.size)]
            assert list(state.number[ring]) == list(range(state.seen - state.size, state.seen))
            if self.config.map == "platt":
                assert 0 <= state.since_fit < min(self.config.refit_every, 1 + state.size // 8)
                continue
            assert 0 <= state.since_fit < HISTOGRAM_REFIT_EVERY, app
            outcomes = list(zip(state.p[: state.size], state.hit[: state.size], strict=True))
            for b in range(self.config.bins):
                kept = [(p, h) for p, h in outcomes if self._bin(p) == b]
                assert state.count[b] == len(kept), (app, b)
                assert abs(state.right[b] - sum(h for _, h in kept)) < 1e-6, (app, b)
                assert abs(state.stated[b] - sum(p for p, _ in kept)) < 1e-6, (app, b)
