"""valid_forecast with its memo: a remembered agents tuple skips only the per-agent checks,
and only agents that cannot change are remembered."""

from __future__ import annotations

from pbkv.cache_manager.workflows import valid_forecast
from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import AgentForecast, Forecast


def test_a_remembered_agents_tuple_still_gets_the_forecasts_own_checks() -> None:
    checked: IdentityMemo[bool] = IdentityMemo()
    agents = (AgentForecast("a", (0.5, 0.75), 1.0), AgentForecast("b", (0.1, 0.2), None))
    # 1. Valid: checked in full and remembered for horizon 2.
    assert valid_forecast(Forecast("w1", 1, 2, agents, 0.5), "w1", checked)
    assert checked.get(agents, 2) is True
    # 2. The same agents for another workflow: still valid (from the memo).
    assert valid_forecast(Forecast("w2", 3, 2, agents, 0.9), "w2", checked)
    # 3. The forecast's own fields are still checked: wrong workflow, bad confidence.
    assert not valid_forecast(Forecast("w3", 1, 2, agents, 0.5), "w1", checked)
    bad_confidence = Forecast("w1", 1, 2, agents, 0.5)
    object.__setattr__(bad_confidence, "confidence", float("nan"))
    assert not valid_forecast(bad_confidence, "w1", checked)
    # 4. Another horizon: not the remembered entry; checked again (and too short).
    longer = Forecast("w1", 1, 2, agents, 0.5)
    object.__setattr__(longer, "horizon", 3)
    assert not valid_forecast(longer, "w1", checked)


def test_agents_that_can_change_are_checked_every_time() -> None:
    checked: IdentityMemo[bool] = IdentityMemo()
    p_within = [0.5, 0.75]
    agent = AgentForecast("a", (0.5, 0.75), None)
    object.__setattr__(agent, "p_within", p_within)  # a list: the predictor may change it
    fc = Forecast("w1", 1, 2, (agent,), 0.5)
    assert valid_forecast(fc, "w1", checked)
    assert len(checked) == 0  # not remembered
    p_within[0] = float("nan")
    assert not valid_forecast(fc, "w1", checked)
