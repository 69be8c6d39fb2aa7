"""Log-linear fusion of experts, learned on a validation split (it is also the calibration:
the weights' overall scale is a temperature)::

    log p(a) = sum_e w_e * log p_e(a) - log Z,      w_e >= 0

Weights minimise the validation log-loss (L-BFGS-B, analytic gradient, small L2 pull toward
the prior weights). Apps with enough validation examples get their own weights; the rest use
the global ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLOOR = 1e-6  # experts' probabilities are floored so one overconfident expert cannot veto


@dataclass(frozen=True, slots=True)
class FusionData:
    """Validation examples stacked for fitting: (n, experts, width) log-probs, padded."""

    log_probs: np.ndarray
    targets: np.ndarray  # (n, width), rows sum to 1
    mask: np.ndarray  # (n, width) bool, True where a candidate exists

    @classmethod
    def stack(cls, rows: list[tuple[np.ndarray, np.ndarray]], num_experts: int) -> FusionData:
        """``rows``: (experts x candidates log-prob matrix, target weights) per example."""
        width = max((lp.shape[1] for lp, _ in rows), default=1)
        n = len(rows)
        lp = np.zeros((n, num_experts, width))
        y = np.zeros((n, width))
        mask = np.zeros((n, width), bool)
        for i, (logp_i, t) in enumerate(rows):
            lp[i, :, : logp_i.shape[1]] = logp_i
            y[i, : len(t)] = t
            mask[i, : len(t)] = True
        return cls(lp, y, mask)


def _loss_grad(
    w: np.ndarray, data: FusionData, prior: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    scores = np.einsum("e,new->nw", w, data.log_probs)
    scores = np.where(data.mask, scores, -np.inf)
    scores -= scores.max(axis=1, keepdims=True)
    logz = np.log(np.exp(scores).sum(axis=1, keepdims=True))
    logp = np.where(data.mask, scores - logz, 0.0)
    n = len(data.targets)
    loss = -(data.targets * logp).sum() / n + l2 * ((w - prior) ** 2).sum()
    resid = np.where(data.mask, np.exp(logp) - data.targets, 0.0)
    grad = np.einsum("nw,new->e", resid, data.log_probs) / n + 2 * l2 * (w - prior)
    return float(loss), grad


def fit_weights(data: FusionData, prior: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    from scipy.optimize import minimize

    res = minimize(
        _loss_grad,
        prior.copy(),
        args=(data, prior, l2),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 20.0)] * len(prior),
    )
    return np.asarray(res.x)


@dataclass(frozen=True, slots=True)
class TopCalibration:
    """Isotonic map of the top-1 probability (fitted on held-out rows); the other candidates
    are rescaled to keep the sum 1. Applied only if it leaves the top candidate on top."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def fit(cls, top_p: np.ndarray, correct: np.ndarray) -> TopCalibration:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(top_p, correct)
        return cls(np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float))

    def apply(self, p: np.ndarray) -> np.ndarray:
        i = int(np.argmax(p))
        top = float(p[i])
        new_top = float(np.interp(top, self.x, self.y))
        if top >= 1.0 or len(p) < 2:
            return p
        new_top = min(max(new_top, 1e-6), 1.0 - 1e-6)
        out = p * ((1.0 - new_top) / (1.0 - top))
        out[i] = new_top
        if np.max(np.delete(out, i)) > new_top:
            return p
        return out

    def to_json(self) -> dict:
        return {"x": self.x.tolist(), "y": self.y.tolist()}


@dataclass(slots=True)
class LogLinearFusion:
    experts: tuple[str, ...]
    global_weights: np.ndarray
    app_weights: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: dict[str, TopCalibration] = field(default_factory=dict)

    def weights(self, app: str) -> np.ndarray:
        return self.app_weights.get(app, self.global_weights)

    def combine(self, app: str, expert_probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
        """``expert_probs``: (experts, candidates) -> fused distribution over candidates."""
        scores = self.weights(app) @ np.log(np.maximum(expert_probs, FLOOR))
        z = np.exp(scores - scores.max())
        p = z / z.sum()
        cal = self.calibration.get(app) if calibrate else None
        return cal.apply(p) if cal is not None else p

    def to_json(self) -> dict:
        return {
            "experts": list(self.experts),
            "global": self.global_weights.tolist(),
            "apps": {a: w.tolist() for a, w in self.app_weights.items()},
            "calibration": {a: c.to_json() for a, c in self.calibration.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> LogLinearFusion:
        return cls(
            tuple(data["experts"]),
            np.array(data["global"]),
            {a: np.array(w) for a, w in data["apps"].items()},
            {
                a: TopCalibration(np.array(c["x"]), np.array(c["y"]))
                for a, c in data.get("calibration", {}).items()
            },
        )
