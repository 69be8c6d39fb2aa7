"""``CacheManager.carried_step``: a workflow another replica owns, as its owner applied it."""

from __future__ import annotations

from pbkv.cache_manager.manager import CacheManager
from pbkv.predictor.forecast import AgentForecast, Forecast


def forecast(wid: str, p: float) -> Forecast:
    return Forecast(wid, 1, 2, (AgentForecast("coder", (p, p), 1.0),), 0.9, "owner")


def test_carried_steps_set_running_agents_and_the_owners_forecast_without_predicting() -> None:
    m = CacheManager()
    m.start_workflow("t/w", "app", tenant="t")
    # 1. A carried start marks the agent running (twice: two parallel steps).
    m.carried_step("t/w", "coder", started=True, parallel_group="g")
    m.carried_step("t/w", "coder", started=True, parallel_group="g")
    # 2. One finishes: the owner's forecast is the workflow's; the state keeps no steps
    #    (nothing was predicted or judged here).
    fc = forecast("t/w", 0.8)
    m.carried_step("t/w", "coder", started=False, forecast=fc)
    assert m.forecast("t/w") is fc
    assert m.workflow_state("t/w").step_index == 0
    # A step starting after it judges nothing here (``step_started`` would judge ``fc``).
    m.carried_step("t/w", "coder", started=True)
    m.carried_step("t/w", "coder", started=False, forecast=fc)
    assert m.stats().predictor_top1_accuracy is None
    # 3. The second finishes with a newer forecast; a finish with nothing running is ignored
    #    (the forecast still moves: the owner's is always the latest).
    m.carried_step("t/w", "coder", started=False, forecast=forecast("t/w", 0.5))
    later = forecast("t/w", 0.2)
    m.carried_step("t/w", "coder", started=False, forecast=later)
    assert m.forecast("t/w") is later
    # 4. It ends like any workflow.
    m.end_workflow("t/w")
    assert m.has_ended("t/w") and not m.has_workflow("t/w")
