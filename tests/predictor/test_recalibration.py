"""The online recalibrator, on small constructed streams with exact figures."""

from __future__ import annotations

import random

import pytest

from pbkv.predictor.forecast import AgentForecast, Forecast
from pbkv.predictor.recalibration import P_MIN, OnlineRecalibrator, RecalibrationConfig


def test_the_map_step_by_step():
    r = OnlineRecalibrator(RecalibrationConfig(window=4, bins=2, prior_weight=2.0))
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


def test_a_calibrated_stream_is_left_alone_and_an_overconfident_one_is_corrected():
    r = OnlineRecalibrator(RecalibrationConfig(window=100, bins=5, prior_weight=10.0))
    for i in range(100):  # 0.75 stated, right 3 times in 4
        r.observe("a", 0.75, i % 4 != 0)
        r.observe("b", 0.75, i % 2 == 0)  # right half the time
    assert r.calibrated("a", 0.75) == pytest.approx(0.75)
    assert r.calibrated("b", 0.75) == pytest.approx((50 + 10 * (0.75 - 25 / 110)) / 110)


def test_apply_moves_the_top_probability_and_the_confidence():
    r = OnlineRecalibrator(RecalibrationConfig(bins=1, prior_weight=0.0))
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
    rest = (1.0 - new) / (1.0 - top) if top < 1.0 else 0.0
    agents = []
    for k, a in enumerate(f.agents):
        p0 = new if k == i else min(new, a.p_next * rest)
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
        assert rec._apps["app"].outcomes == ref._apps["app"].outcomes
        cases += got.raw_top_p != got.agents[0].p_next or len(set(ps)) < k
    assert cases > 100  # recalibrated or tied forecasts were among them
