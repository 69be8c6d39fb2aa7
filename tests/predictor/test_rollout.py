"""Multi-step propagation: exact against brute-force path enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pbkv.predictor.rollout import eta_steps, within_horizon


def brute_force(p1: np.ndarray, t: np.ndarray, horizon: int) -> np.ndarray:
    n = len(p1)
    out = np.zeros((n, horizon))
    for path in itertools.product(range(n), repeat=horizon):
        prob = p1[path[0]] * np.prod([t[a, b] for a, b in itertools.pairwise(path)])
        for agent in range(n):
            if agent in path:
                out[agent, path.index(agent) :] += prob
    return out


def test_taboo_chain_matches_enumeration():
    rng = np.random.default_rng(0)
    p1 = rng.dirichlet(np.ones(4))
    t = rng.dirichlet(np.ones(4), size=4)
    np.testing.assert_allclose(within_horizon(p1, t, 3), brute_force(p1, t, 3), atol=1e-12)


def test_eta_is_expected_first_call_given_a_call():
    # deterministic cycle 0 -> 1 -> 2 -> 0, starting at 0
    t = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    within = within_horizon(np.array([1.0, 0, 0]), t, 2)
    assert within.tolist() == [[1, 1], [0, 1], [0, 0]]
    assert eta_steps(within) == [1.0, 2.0, None]


def test_fanout_round_gives_every_member_its_call():
    t = np.full((3, 3), 1 / 3)
    within = within_horizon(np.array([0.5, 0.5, 0.0]), t, 2, fanout=1.5, next_size=2.0)
    assert within[0, 0] == pytest.approx(1.0) and within[1, 0] == pytest.approx(1.0)
    assert within[2, 0] == 0.0 and within[2, 1] == pytest.approx(0.5)  # min(1, 1.5 / 3)
