"""The cache manager recalibrates forecasts from the outcomes it judges, and its conservative
gate (the pbkv scorer's Wilson bound and trust weight) reads the calibrated figures."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cm_helpers import Harness
from support import ScriptedPredictor

from pbkv.predictor.forecast import ObservedStep
from pbkv.predictor.recalibration import RecalibrationConfig

RAW = ({"A": (0.8, 0.9, 1.0), "B": (0.15, 0.5, 2.0), "C": (0.05, 0.05, None)}, 0.8)
# What the recalibration makes of RAW once the top pick (A) was right 3 times in 5
CALIBRATED = ({"A": (0.6, 0.9, 1.0), "B": (0.3, 0.5, 2.0), "C": (0.1, 0.1, None)}, 0.6)
# one bin with no prior and no lag term: calibrated = share right, under either map (the default
# "platt" one: its log-odds map q, then + (right - stated) / count = q + 3/5 - q)
EXACT = RecalibrationConfig(bins=1, prior_weight=0.0, lag_scale=0.0)


def scored(forecast: tuple, recalibration: RecalibrationConfig) -> Harness:
    """Five judged workflows (A forecast on top each time, A ran 3 times), then workflow w
    runs A over two blocks and is forecast ``forecast``."""
    p = ScriptedPredictor()
    for i in range(5):
        p.script[(f"l{i}", 1)] = RAW
    p.script[("w", 1)] = forecast
    h = Harness.make("pbkv", predictor=p, horizon=2, recalibration=recalibration)
    m = h.manager
    for i, nxt in enumerate("ABABA"):
        m.start_workflow(f"l{i}", "app")
        m.step_started(f"l{i}", "A")
        m.step_finished(f"l{i}", ObservedStep("A"))
        m.step_started(f"l{i}", nxt)  # judges the forecast made after the first step
        m.end_workflow(f"l{i}")
    m.start_workflow("w", "app")
    h.tick(1)
    m.step_started("w", "A")
    h.run("w", "A", (b"s0", b"w0"))
    m.step_finished("w", ObservedStep("A"))
    h.plan()  # re-ranks what changed: the scores below are this plan's
    return h


def _scores(h: Harness) -> list[tuple[bytes, float, float]]:
    return [(s.block_hash, s.score, s.p_reuse) for s in h.manager.top_kept(10)]


@pytest.mark.parametrize("exact", [EXACT, replace(EXACT, map="histogram")], ids=lambda c: c.map)
def test_the_gate_scores_with_the_calibrated_forecast(exact):
    h = scored(RAW, exact)
    fc = h.manager.forecast("w")
    assert fc.raw_top_p == 0.8 and fc.confidence == pytest.approx(0.6)
    assert {a.agent: a.p_within for a in fc.agents} == {
        "A": pytest.approx((0.6, 0.9)),
        "B": pytest.approx((0.3, 0.5)),
        "C": pytest.approx((0.1, 0.1)),
    }
    # The same scores as a manager handed the calibrated forecast itself ...
    given = scored(CALIBRATED, RecalibrationConfig(enabled=False))
    ours, theirs = _scores(h), _scores(given)
    assert [b for b, _, _ in ours] == [b for b, _, _ in theirs] == [b"s0", b"w0"]
    assert [x for _, s, p in ours for x in (s, p)] == pytest.approx(
        [x for _, s, p in theirs for x in (s, p)]
    )
    # ... and not those of the raw, overconfident forecast.
    raw = _scores(scored(RAW, RecalibrationConfig(enabled=False)))
    assert all(r[1] > o[1] for r, o in zip(raw, ours, strict=True))


def test_a_new_model_starts_a_fresh_recalibration():
    h = scored(RAW, EXACT)
    h.manager.set_predictor(h.manager._predictor)  # a hot reload, same forecasts
    assert h.manager.forecast("w").confidence == 0.8  # nothing learnt about this model yet
