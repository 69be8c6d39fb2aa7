"""Online recalibration of the top P(next) from observed outcomes (issue 12, item 6).

A model calibrated offline (``fusion.TopCalibration``) is calibrated for the data it was
trained on; on a shifted workload (another app, another collection) its stated top P(next)
drifts from how often the top pick is right. The cache manager judges every forecast by the
step that follows it, so it can learn the map back. Per app, over the last ``window`` judged
forecasts, with ``bins`` equal-width bins of the raw top probability::

    bin b:   n_b forecasts, h_b of them right          (all bins: N forecasts, H right,
                                                        raw probabilities summing to S)
    gap             = (H - S) / (N + m)                 every bin's accuracy - stated, shrunk
    calibrated(p)   = (h_b + m * (p + gap)) / (n_b + m) clipped to [P_MIN, P_MAX]

with ``m = prior_weight``: a bin with many outcomes gets its accuracy (histogram binning), a
bin with few gets ``p`` moved by the pooled gap; with no outcomes the map is the identity.
``apply`` rewrites a forecast: the top agent's P(next) becomes
the calibrated figure, the other agents' P(next) are scaled to keep the sum, P(within h) never
below P(next), and the confidence (what the scorer's conservative gate trusts) is scaled by
calibrated / raw: for the fused model, whose confidence is its top P(next), it becomes the
calibrated figure. The raw figure is kept in ``Forecast.raw_top_p`` for ``observe``.

Bounded: ``window`` outcomes per app, at most ``max_apps`` apps (the least recently
observed app is forgotten first). Mechanism only: the caller decides what is observed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from pbkv.predictor.forecast import AgentForecast, Forecast

P_MIN, P_MAX = 1e-3, 1.0 - 1e-3


@dataclass(frozen=True, slots=True)
class RecalibrationConfig:
    """How the top P(next) is recalibrated online (``enabled=False``: never)."""

    enabled: bool = True  # False: forecasts pass unchanged
    window: int = 200  # judged forecasts per app the map is learnt from
    bins: int = 5  # equal-width bins of the raw top probability (few: a window's outcomes
    # are few hundred and correlated; docs/predictor.md, "Calibration under drift")
    prior_weight: float = 10.0  # pseudo-forecasts per bin at no correction
    max_apps: int = 1_024  # apps tracked at once

    def __post_init__(self) -> None:
        for name in ("window", "bins", "max_apps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"RecalibrationConfig.{name} must be an integer >= 1, got {value!r}"
                )
        if not (isinstance(self.prior_weight, int | float) and 0.0 <= self.prior_weight < 1e9):
            raise ValueError(
                f"RecalibrationConfig.prior_weight must be a number >= 0, got {self.prior_weight!r}"
            )


class _AppBins:
    """One app's last ``window`` outcomes and their per-bin sums."""

    __slots__ = ("outcomes", "count", "stated", "right")

    def __init__(self, window: int, bins: int) -> None:
        self.outcomes: deque[tuple[int, float, int]] = deque(maxlen=window)  # (bin, p, hit)
        self.count = [0] * bins
        self.stated = [0.0] * bins
        self.right = [0] * bins


class OnlineRecalibrator:
    def __init__(self, config: RecalibrationConfig | None = None) -> None:
        self.config = config or RecalibrationConfig()
        self._apps: OrderedDict[str, _AppBins] = OrderedDict()
        self.observed = 0

    def _bin(self, p: float) -> int:
        return min(int(p * self.config.bins), self.config.bins - 1)

    def calibrated(self, app: str, p: float) -> float:
        """The calibrated value of a raw top probability ``p`` for ``app``."""
        state = self._apps.get(app)
        if state is None or not self.config.enabled:
            return p
        b = self._bin(p)
        if not state.outcomes:
            return p
        m, n = self.config.prior_weight, len(state.outcomes)
        pooled = (sum(state.right) - sum(state.stated)) / (n + m)  # every bin's gap, shrunk
        value = (state.right[b] + m * (p + pooled)) / (state.count[b] + m)
        return min(P_MAX, max(P_MIN, value))

    def observe(self, app: str, raw_top_p: float, hit: bool) -> None:
        """One judged forecast: its raw top probability and whether the top pick ran."""
        if not self.config.enabled:
            return
        state = self._apps.get(app)
        if state is None:
            state = self._apps[app] = _AppBins(self.config.window, self.config.bins)
            if len(self._apps) > self.config.max_apps:
                self._apps.popitem(last=False)
        else:
            self._apps.move_to_end(app)
        if len(state.outcomes) == state.outcomes.maxlen:
            ob, op, oh = state.outcomes[0]
            state.count[ob] -= 1
            state.stated[ob] -= op
            state.right[ob] -= oh
        b = self._bin(raw_top_p)
        state.outcomes.append((b, raw_top_p, int(hit)))
        state.count[b] += 1
        state.stated[b] += raw_top_p
        state.right[b] += int(hit)
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
        if new == top:  # nothing learnt for this bin (yet): as the predictor said
            return Forecast(
                f.workflow_id, f.step_index, f.horizon, f.agents, f.confidence, f.model_version, top
            )
        rest = (1.0 - new) / (1.0 - top) if top < 1.0 else 0.0
        agents = []
        for k, a in enumerate(f.agents):
            ps = a.p_within
            if k == i:
                p0 = new
            else:  # min(new, P(next) * rest)
                p0 = ps[0] * rest
                if not p0 < new:
                    p0 = new
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
        """The per-bin sums equal the kept outcomes', and the bounds hold."""
        assert len(self._apps) <= self.config.max_apps
        for app, state in self._apps.items():
            assert len(state.outcomes) <= self.config.window, app
            for b in range(self.config.bins):
                kept = [(p, h) for ob, p, h in state.outcomes if ob == b]
                assert state.count[b] == len(kept), (app, b)
                assert state.right[b] == sum(h for _, h in kept), (app, b)
                assert abs(state.stated[b] - sum(p for p, _ in kept)) < 1e-6, (app, b)
