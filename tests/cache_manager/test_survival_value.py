"""pbkv's survival value (issue 12 item 5), exact figures step by step: P(reused before the
cache would evict the block) from the forecast and the cache's turnover."""

from __future__ import annotations

import math

import pytest
from cm_helpers import Harness
from support import ScriptedPredictor

from pbkv.cache_manager.engines import Turnover
from pbkv.cache_manager.scorer import Scorer, survival_p
from pbkv.predictor.forecast import ObservedStep


def test_survival_p_reads_the_forecast_at_the_steps_a_block_lasts() -> None:
    p_within = (0.2, 0.5, 0.8)  # P(use within 1, 2, 3 steps)
    assert survival_p(p_within, 0.0) == 0.0  # evicted at once: every reuse is a miss
    assert math.isclose(survival_p(p_within, 0.5), 0.1)  # half way to the first step
    assert survival_p(p_within, 1.0) == 0.2
    assert math.isclose(survival_p(p_within, 1.5), 0.35)
    assert survival_p(p_within, 3.0) == 0.8
    assert survival_p(p_within, 10.0) == 0.8  # beyond the horizon: its last figure
    assert survival_p(p_within, math.inf) == 0.8
    assert survival_p((), 2.0) == 0.0


def test_turnover_rate_and_survival() -> None:
    t = Turnover(window_s=30.0)
    assert t.survival_s(100) == math.inf  # nothing measured
    t.note(5)
    t.update(0.0)  # the first update only sets the start: what came before is not timed
    assert t.rate == 0.0 and t.pending == 0
    t.note(60)
    t.update(10.0)  # 60 blocks in 10 s, weighed 1 - exp(-10/30) against the old rate 0
    a = 1.0 - math.exp(-1.0 / 3.0)
    assert math.isclose(t.rate, a * 6.0)
    assert math.isclose(t.survival_s(100), 100 / (a * 6.0))
    t.note(7)
    t.update(10.0)  # no time passed: nothing folded in yet
    assert t.pending == 7 and math.isclose(t.rate, a * 6.0)
    t.update(40.0)  # 7 blocks over 30 s
    b = 1.0 - math.exp(-1.0)
    assert math.isclose(t.rate, (1 - b) * a * 6.0 + b * 7 / 30)


def _run(h: Harness, wf: str, agent: str, hashes: tuple[bytes, ...], t: float) -> None:
    h.tick(t)
    h.manager.step_started(wf, agent)
    h.run(wf, agent, hashes)
    h.manager.step_finished(wf, ObservedStep(agent, end_s=t))


@pytest.mark.parametrize("policy", ["pbkv-survival", "pbkv"])
def test_a_reuse_after_the_expected_eviction_counts_as_a_miss(policy: str) -> None:
    p = ScriptedPredictor()
    # w1's agent A comes back only at the second step from now (certain by then); w2's B
    # maybe at the next one.
    p.script[("w1", 1)] = ({"A": (0.0, 0.9, 2.0)}, 1.0)
    p.script[("w2", 1)] = ({"B": (0.5, 0.5, 1.0)}, 1.0)
    h = Harness.make(policy, predictor=p, horizon=2, gpu=6, cpu=0)
    m = h.manager
    scorer = Scorer()
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    h.plan()  # t = 0: the turnover is timed from here
    # t = 5: 20 anonymous blocks pass through the cache (each stored, then evicted).
    h.tick(5.0)
    for i in range(20):
        z = f"z{i}".encode()
        h.run(None, None, (z,))
        h.evict(z)
    # t = 10: each workflow runs one step (10 s per step so far).
    _run(h, "w1", "A", (b"a0", b"a1"), 10.0)
    _run(h, "w2", "B", (b"b0", b"b1"), 10.0)
    order = h.order()
    # Turnover at t = 10: 20 blocks gone over 10 s, weighed 1 - exp(-10/30): a block nobody
    # keeps lasts 6 / rate = 10.58 s in this 6-block cache, 1.058 of the workflows' steps.
    rate = (1.0 - math.exp(-1.0 / 3.0)) * 20 / 10
    steps = 6 / rate / 10.0
    assert 1.05 < steps < 1.06
    top = {s.block_hash: s for s in m.top_kept(10)}
    lb = scorer.lower_bound
    if policy == "pbkv-survival":
        # A's reuse, two steps away, comes after the expected eviction: P(A before it) is
        # 0.9 x 0.058 = 0.052; B's, maybe next step, counts in full (0.5). A's blocks go
        # first, though A is near certain within the horizon.
        assert math.isclose(top[b"a0"].p_reuse, lb(0.9 * (steps - 1), 1.0))
        assert math.isclose(top[b"b0"].p_reuse, lb(0.5, 1.0))
        assert order == [b"a1", b"a0", b"b1", b"b0"]
    else:
        # The former value reads P(use within the horizon): A's 0.9 outranks B's 0.5.
        assert math.isclose(top[b"a0"].p_reuse, lb(0.9, 1.0))
        assert order == [b"b1", b"a1", b"b0", b"a0"]
