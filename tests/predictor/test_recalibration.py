"""The online recalibrator, on small constructed streams with exact figures."""

from __future__ import annotations

import math
import random

import pytest

from pbkv.predictor.forecast import AgentForecast, Forecast
from pbkv.predictor.recalibration import (
    P_MIN,
    OnlineRecalibrator,
    RecalibrationConfig,
    rescaled,
)


def test_the_histogram_map_step_by_step():
    r = OnlineRecalibrator(RecalibrationConfig(map="histogram", window=4, bins=2, prior_weight=2.0))
    assert r.calibrated("app", 0.9) == 0.9  # nothing observed: the identity
    # (0.9, wrong): pooled gap (0 - 0.9) / (1 + 2) = -0.3; bin [0.5, 1): 0 of 1 right
    r.observe("app", 0.9, False)
    assert r.calibrated("app", 0.9) == pytest.approx((0 + 2 * (0.9 - 0.3)) / 3)  # 0.4
    # an empty bin moves p by the pooled gap alone: 0.3 - 0.3 = 0, clipped to P_MIN
    assert r.calibrated("app", 0.3) == P_MIN
    assert r.calibrated("app", 0.45) == pytest.approx(0.15)
    # (0.9, right): gap (1 - 1.8) / 4 = -0.2; bin: 1 of 2
    r.observe("app", 0.9, True)
    assert r.calibrated("app", 0.9) == pytest.approx((1 + 2 * 0.7) / 4)  # 0.6
    # (0.8, wrong): gap (1 - 2.6) / 5 = -0.32; bin: 1 of 3
    r.observe("app", 0.8, False)
    assert r.calibrated("app", 0.9) == pytest.approx((1 + 2 * 0.58) / 5)  # 0.432
    # (0.3, right): gap (2 - 2.9) / 6 = -0.15; the low bin: 1 of 1
    r.observe("app", 0.3, True)
    assert r.calibrated("app", 0.9) == pytest.approx((1 + 2 * 0.75) / 5)  # 0.5
    assert r.calibrated("app", 0.3) == pytest.approx((1 + 2 * 0.15) / 3)  # 0.4333
    # (0.6, right): the window keeps 4, the first (0.9, wrong) leaves; gap (3 - 2.6) / 6
    r.observe("app", 0.6, True)
    assert r.calibrated("app", 0.9) == pytest.approx((2 + 2 * (0.9 + 0.4 / 6)) / 5)
    assert r.calibrated("other", 0.9) == 0.9  # per app
    r.check_integrity()


def test_the_histogram_map_leaves_a_calibrated_stream_alone_and_corrects_an_overconfident_one():
    r = OnlineRecalibrator(
        RecalibrationConfig(map="histogram", window=100, bins=5, prior_weight=10.0)
    )
    for i in range(100):  # 0.75 stated, right 3 times in 4
        r.observe("a", 0.75, i % 4 != 0)
        r.observe("b", 0.75, i % 2 == 0)  # right half the time
    assert r.calibrated("a", 0.75) == pytest.approx(0.75)
    assert r.calibrated("b", 0.75) == pytest.approx((50 + 10 * (0.75 - 25 / 110)) / 110)


def test_the_platt_map_held_at_the_identity_is_the_bin_correction():
    # a prior of 1e8 pseudo-forecasts keeps (a, b) at (0, 1): q = p, and each bin of q moves
    # p by (right - stated) / (count + prior_weight)
    r = OnlineRecalibrator(RecalibrationConfig(window=4, bins=2, platt_prior=1e8, prior_weight=2.0))
    assert r.calibrated("app", 0.9) == 0.9  # nothing observed: the identity
    r.observe("app", 0.9, False)  # bin [0.5, 1): 0 right, 0.9 stated, 1 forecast
    assert r.calibrated("app", 0.9) == pytest.approx(0.9 + (0 - 0.9) / 3, abs=1e-6)
    assert r.calibrated("app", 0.7) == pytest.approx(0.7 - 0.3, abs=1e-6)
    assert r.calibrated("app", 0.2) == pytest.approx(0.2, abs=1e-6)  # its bin is empty
    for p, hit in ((0.8, True), (0.3, True), (0.6, True), (0.7, False)):  # (0.9, no) leaves
        r.observe("app", p, hit)
    # bin [0.5, 1): 0.8 right, 0.6 right, 0.7 wrong: (2 - 2.1) / (3 + 2); bin [0, 0.5): 0.3 right
    assert r.calibrated("app", 0.9) == pytest.approx(0.9 - 0.1 / 5, abs=1e-6)
    assert r.calibrated("app", 0.4) == pytest.approx(0.4 + 0.7 / 3, abs=1e-6)
    r.check_integrity()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_platt_map_is_the_penalised_fit_and_recovers_a_logistic_distortion():
    # outcomes drawn from the true map sigmoid(-0.4 + 0.5 logit p): overconfident
    # (no lag term: the distortion does not change along the stream)
    r = OnlineRecalibrator(
        RecalibrationConfig(window=2000, bins=1, prior_weight=1e8, lag_scale=0.0)
    )
    rng = random.Random(3)
    seen = []
    for _ in range(2000):
        p = rng.uniform(0.05, 0.99)
        hit = rng.random() < 1 / (1 + math.exp(-(-0.4 + 0.5 * _logit(p))))
        r.observe("app", p, hit)
        seen.append((p, hit))
    for _ in range(10):  # refits: Newton steps from each last fit, until converged
        r._refit(r._apps["app"])
    a, b, c = r._apps["app"].ab
    assert c == 0.0  # no lag term: its coefficient stays at the prior's 0
    # the fit is the penalised optimum: the gradient of the objective is zero
    g0 = sum(1 / (1 + math.exp(-(a + b * _logit(p)))) - h for p, h in seen) + 10.0 * a
    g1 = sum((1 / (1 + math.exp(-(a + b * _logit(p)))) - h) * _logit(p) for p, h in seen)
    g1 += 10.0 * (b - 1.0)
    assert abs(g0) < 1e-4 and abs(g1) < 1e-4
    assert a == pytest.approx(-0.4, abs=0.15) and b == pytest.approx(0.5, abs=0.1)
    # prior_weight 1e8: no bin correction; the map is the logistic one
    assert r.calibrated("app", 0.9) == pytest.approx(1 / (1 + math.exp(-(a + b * _logit(0.9)))))
    r.check_integrity()


def test_the_platt_map_leaves_a_calibrated_stream_alone():
    # at each stated p in 0.35, 0.45, ..., 0.95, exactly a share p of 20 forecasts is right:
    # (a, b) = (0, 1) is the optimum, and every bin's outcomes match what it stated (no lag
    # term: within each p the right ones come first, which it would read as a drift)
    r = OnlineRecalibrator(RecalibrationConfig(window=140, lag_scale=0.0))
    for k in range(7):
        p = 0.35 + 0.1 * k
        for i in range(20):
            r.observe("app", p, i < round(20 * p))
    for _ in range(5):  # refits: Newton steps from each last fit, until converged
        r._refit(r._apps["app"])
    assert r._apps["app"].ab == pytest.approx((0.0, 1.0, 0.0), abs=1e-4)
    for k in range(7):
        assert r.calibrated("app", 0.35 + 0.1 * k) == pytest.approx(0.35 + 0.1 * k, abs=1e-4)


def test_apply_moves_the_top_probability_and_the_confidence():
    # one bin, no prior, no lag term: the share right
    r = OnlineRecalibrator(RecalibrationConfig(bins=1, prior_weight=0.0, lag_scale=0.0))
    fc = Forecast(
        "w",
        3,
        2,
        (
            AgentForecast("A", (0.8, 0.9), 1.0),
            AgentForecast("B", (0.15, 0.5), 2.0),
            AgentForecast("C", (0.05, 0.05), None),
        ),
        confidence=0.8,
    )
    first = r.apply("app", fc)  # nothing learnt: as the predictor said, raw figure kept
    assert first == Forecast(fc.workflow_id, 3, 2, fc.agents, 0.8, raw_top_p=0.8)
    for hit in (True, False, True, False, True):  # the top pick right 3 times in 5
        r.observe_forecast("app", first, "A" if hit else "B")
    out = r.apply("app", fc)
    assert out.raw_top_p == 0.8
    assert out.confidence == pytest.approx(0.6)  # 0.8 * 0.6 / 0.8
    got = {a.agent: a.p_within for a in out.agents}
    assert got["A"] == pytest.approx((0.6, 0.9))
    assert got["B"] == pytest.approx((0.3, 0.5))  # 0.15 * (0.4 / 0.2)
    assert got["C"] == pytest.approx((0.1, 0.1))  # P(within 2) never below P(next)
    assert r.apply("app", out) is out  # already recalibrated: not twice


def test_off_and_bounded():
    off = OnlineRecalibrator(RecalibrationConfig(enabled=False))
    off.observe("a", 0.9, False)
    assert off.calibrated("a", 0.9) == 0.9 and off.observed == 0
    r = OnlineRecalibrator(RecalibrationConfig(window=8, max_apps=2))
    rng = random.Random(1)
    for i in range(500):
        r.observe(f"app{i % 3}", rng.random(), rng.random() < 0.5)
    r.check_integrity()  # per-bin sums match the kept outcomes; windows and apps bounded
    assert list(r._apps) == ["app0", "app1"]  # app2 observed least recently: forgotten
    assert r.calibrated("app2", 0.9) == 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "RecalibrationConfig.window must be an integer >= 1, got 0"),
        ({"bins": True}, "RecalibrationConfig.bins must be an integer >= 1, got True"),
        ({"prior_weight": -1.0}, "RecalibrationConfig.prior_weight must be a number >= 0"),
        ({"platt_prior": "x"}, "RecalibrationConfig.platt_prior must be a number >= 0"),
        ({"map": "iso"}, "RecalibrationConfig.map must be one of"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecalibrationConfig(**kwargs)


def _apply_by_definition(rec: OnlineRecalibrator, app: str, f: Forecast) -> Forecast:
    """``apply`` as the module states it, with ``dataclasses.replace`` and ``max``/``min``."""
    from dataclasses import replace

    i = max(range(len(f.agents)), key=lambda k: f.agents[k].p_next)
    top = f.agents[i].p_next
    new = rec.calibrated(app, top)
    if new == top:
        return replace(f, raw_top_p=top)
    agents = []
    for k, a in enumerate(f.agents):
        p0 = new if k == i else rescaled(a.p_next, top, new)
        within = (p0, *(min(1.0, max(p, p0)) for p in a.p_within[1:]))
        agents.append(AgentForecast(a.agent, within, a.eta_steps))
    confidence = min(1.0, f.confidence * new / top) if top > 0 else new
    return replace(f, agents=tuple(agents), confidence=confidence, raw_top_p=top)


def test_apply_and_observe_equal_their_definition_on_random_forecasts():
    """The written-out ``apply`` (and the top pick ``observe_forecast`` judges) equal the
    plain definition to the last bit: ties, P(next) 1.0 and 0, bins with and without
    outcomes."""
    rng = random.Random(3)
    rec, ref = OnlineRecalibrator(), OnlineRecalibrator()
    cases = 0
    for n in range(600):
        k = rng.randint(1, 5)
        ps = [rng.choice((0.0, 1.0, 0.5, rng.random())) for _ in range(k)]
        agents = tuple(
            AgentForecast(f"a{j}", (p, *sorted(rng.uniform(p, 1.0) for _ in range(3))), None)
            for j, p in enumerate(ps)
        )
        f = Forecast(f"w{n}", 1, 4, agents, rng.random())
        got = rec.apply("app", f)
        assert got == _apply_by_definition(ref, "app", f)
        ran = f"a{rng.randrange(k)}"
        rec.observe_forecast("app", got, ran)
        best = max(got.agents, key=lambda a: a.p_next)
        ref.observe("app", got.raw_top_p, best.agent == ran)
        mine, theirs = rec._apps["app"], ref._apps["app"]
        assert (mine.size, mine.next, mine.ab) == (theirs.size, theirs.next, theirs.ab)
        assert list(mine.p) == list(theirs.p) and list(mine.hit) == list(theirs.hit)
        cases += got.raw_top_p != got.agents[0].p_next or len(set(ps)) < k
    assert cases > 100  # recalibrated or tied forecasts were among them


def test_apply_remembers_a_reused_agents_tuple_only_while_the_map_stands_still():
    """A caching predictor hands back the same agents tuple for many workflows: ``apply``
    reuses its recalibrated agents while the calibrated top is the same, and recomputes them
    (equal to the definition) once a refit moves it."""
    rec, ref = OnlineRecalibrator(), OnlineRecalibrator()
    agents = (AgentForecast("A", (0.7, 0.9), 1.0), AgentForecast("B", (0.2, 0.6), 2.0))
    # 1. Nothing learnt: as the predictor said, the same tuple.
    first = rec.apply("app", Forecast("w0", 1, 2, agents, 0.5))
    assert first.agents is agents
    # 2. Three misses (the top pick was B): refits move the map; the next apply computes.
    for _ in range(3):
        rec.observe_forecast("app", first, "B")
        ref.observe_forecast("app", first, "B")
    a = rec.apply("app", Forecast("w1", 4, 2, agents, 0.5))
    assert a == _apply_by_definition(ref, "app", Forecast("w1", 4, 2, agents, 0.5))
    # 3. Another workflow at the same point, the map unchanged: the same agents reused.
    b = rec.apply("app", Forecast("w2", 4, 2, agents, 0.5))
    assert b.agents is a.agents and b.workflow_id == "w2"
    assert b == _apply_by_definition(ref, "app", Forecast("w2", 4, 2, agents, 0.5))
    # 4. Another confidence: recomputed.
    c = rec.apply("app", Forecast("w3", 4, 2, agents, 0.25))
    assert (
        c.confidence
        == _apply_by_definition(ref, "app", Forecast("w3", 4, 2, agents, 0.25)).confidence
    )
    # 5. One more outcome refits (size 4 <= 8: every outcome): the top moves, recomputed.
    rec.observe_forecast("app", b, "A")
    ref.observe_forecast("app", b, "A")
    d = rec.apply("app", Forecast("w4", 5, 2, agents, 0.5))
    assert d.agents[0].p_within[0] != a.agents[0].p_within[0]
    assert d == _apply_by_definition(ref, "app", Forecast("w4", 5, 2, agents, 0.5))
