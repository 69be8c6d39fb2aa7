"""The value-ordered host tier, step by step: which CPU copies a plan tells the tier to drop
first (``CachePlan.host_drop_first``), as forecasts move."""

from __future__ import annotations

from cm_helpers import Harness, b
from support import ScriptedPredictor

from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.predictor.forecast import ObservedStep


def test_the_plan_names_cpu_copies_lowest_value_first() -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.05, 0.1, None), "B": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w1", 2)] = ({"A": (0.9, 0.95, 1.0), "B": (0.05, 0.1, None)}, 0.9)
    h = Harness.make(
        "pbkv", predictor=p, horizon=2, gpu=8, cpu=8, planner=PlannerConfig(host_plan_blocks=64)
    )
    m = h.manager
    m.start_workflow("w1", "app")
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0", b"a1"))
    m.step_finished("w1", ObservedStep("A"))
    h.tick(2)
    h.run("w1", "B", (b"b0", b"b1"))
    # Both prompts move to the CPU tier (offloaded, then evicted from the GPU).
    h.store((b"a0", b"a1"), None, Tier.CPU)
    h.store((b"b0", b"b1"), None, Tier.CPU)
    h.evict(b"a0", b"a1", b"b0", b"b1")
    # After A, B is likely next and A is not: A's copies go first, a prompt's tail before
    # its head (the tail is worth less: nothing after it depends on it).
    assert list(h.plan().host_drop_first) == b("a1", "a0", "b1", "b0")
    # The forecast turns: A next, B unlikely.
    m.step_started("w1", "B")
    m.step_finished("w1", ObservedStep("B"))
    assert list(h.plan().host_drop_first) == b("b1", "b0", "a1", "a0")
    # A CPU copy of a GPU block is the GPU copy's insurance: not named (tier's LRU).
    h.tick(3)
    h.run("w1", "C", (b"c0",))
    h.store((b"c0",), None, Tier.CPU)
    assert b"c0" not in h.plan().host_drop_first


def test_host_plan_blocks_caps_the_list_and_zero_leaves_the_tier_lru() -> None:
    for policy, cap, expect in (("pbkv", 1, 1), ("pbkv", 0, 0), ("kvflow", 8, 0)):  # 0: default
        h = Harness.make(policy, gpu=8, cpu=8, planner=PlannerConfig(host_plan_blocks=cap))
        h.manager.start_workflow("w1", "app")
        h.run("w1", "A", (b"a0", b"a1"))
        h.store((b"a0", b"a1"), None, Tier.CPU)
        h.evict(b"a0", b"a1")
        assert len(h.plan().host_drop_first) == expect
