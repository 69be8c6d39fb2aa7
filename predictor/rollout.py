"""Multi-step forecasts by exact propagation over a first-order Markov approximation.

Given P(next round's agent) ``p1`` over N candidates and a transition matrix ``T`` (rows sum
to 1), the probability that agent ``a`` is first called at round h follows from a "taboo"
chain that never visits ``a``::

    Q_1[a, s]     = p1[s]            for s != a, else 0
    Q_{h+1}[a, s] = (Q_h @ T)[a, s]  for s != a, else 0
    P(a within h) = 1 - sum_s Q_h[a, s]

All targets at once are an N x N matrix product per step: microseconds for tens of agents.
A fan-out round calls several agents. For an app that fans out, the categorical
distribution of round r (p_1, then p_{r+1} = p_r @ T) is turned into call probabilities
c_r = min(1, m_r * p_r) with m_r the expected round size (known for the next round from the
last one, the app's mean after that), and rounds are treated as independent:
P(within h) = 1 - prod_{r<=h} (1 - c_r).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pbkv.predictor.forecast import AgentForecast

ETA_MIN_PROBABILITY = 0.5  # eta is reported only for agents more likely called than not


def within_horizon(
    p1: np.ndarray,
    transition: np.ndarray,
    horizon: int,
    fanout: float = 1.0,
    next_size: float = 1.0,
) -> np.ndarray:
    """(N, horizon) array: P(agent called within h rounds), h = 1..horizon."""
    if fanout > 1.0:
        return _within_fanout(p1, transition, horizon, fanout, next_size)
    n = len(p1)
    off_diag = _off_diagonal(n)
    q = p1[None, :] * off_diag
    out = np.empty((n, horizon))
    out[:, 0] = 1.0 - q.sum(axis=1)
    for h in range(1, horizon):
        q = (q @ transition) * off_diag
        out[:, h] = 1.0 - q.sum(axis=1)
    return np.clip(np.maximum.accumulate(out, axis=1), 0.0, 1.0)


def _within_fanout(
    p1: np.ndarray, transition: np.ndarray, horizon: int, fanout: float, next_size: float
) -> np.ndarray:
    out = np.empty((len(p1), horizon))
    p, not_yet = p1, np.ones(len(p1))
    for h in range(horizon):
        size = next_size if h == 0 else fanout
        not_yet = not_yet * (1.0 - np.minimum(1.0, size * p))
        out[:, h] = 1.0 - not_yet
        p = p @ transition
    return np.clip(out, 0.0, 1.0)


def eta_steps(within: np.ndarray) -> list[float | None]:
    """Expected rounds until the next call, given a call within the horizon; ``None`` when the
    agent is not expected within the horizon (P(within H) < ETA_MIN_PROBABILITY)."""
    first_hit = within.copy()  # P(first call at round h): within's differences along h
    first_hit[:, 1:] -= within[:, :-1]
    total = within[:, -1]
    mean = (first_hit @ _rounds(within.shape[1])) / np.maximum(total, 1e-12)
    pairs = zip(mean.tolist(), total.tolist(), strict=True)
    return [m if t >= ETA_MIN_PROBABILITY else None for m, t in pairs]


# Constants per size, built once (read-only: every forecast shares them).
@lru_cache(maxsize=64)
def _off_diagonal(n: int) -> np.ndarray:
    m = 1.0 - np.eye(n)
    m.flags.writeable = False
    return m


@lru_cache(maxsize=64)
def _rounds(horizon: int) -> np.ndarray:
    r = np.arange(1, horizon + 1)
    r.flags.writeable = False
    return r


def agent_forecasts(candidates: tuple[str, ...], within: np.ndarray) -> tuple[AgentForecast, ...]:
    etas = eta_steps(within)
    rows = within.tolist()
    triples = zip(candidates, rows, etas, strict=True)
    return tuple(AgentForecast(a, tuple(r), e) for a, r, e in triples)
