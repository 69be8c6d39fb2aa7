"""The value-ordered host tier, step by step: which CPU copies a plan tells the tier to drop
first (``CachePlan.host_drop_first``), as forecasts move."""

from __future__ import annotations

from cm_helpers import Harness, b
from support import ScriptedPredictor

from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.cache_manager.policies import PbkvPolicyConfig
from pbkv.predictor.forecast import ObservedStep


def _run_to_cpu(h: Harness, agent: str, hashes: tuple[bytes, ...]) -> None:
    """``agent``'s prompt in w1 runs, is copied to the CPU tier and evicted from the GPU."""
    h.run("w1", agent, hashes)
    h.store(hashes, None, Tier.CPU)
    h.evict(*hashes)


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
    # Both prompts move to the CPU tier (offloaded, then evicted from the GPU).
    m.step_started("w1", "A")
    _run_to_cpu(h, "A", (b"a0", b"a1"))
    m.step_finished("w1", ObservedStep("A"))
    h.tick(2)
    _run_to_cpu(h, "B", (b"b0", b"b1"))
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


def test_a_likely_contexts_tail_outlasts_an_unlikely_contexts_head() -> None:
    """``host_order`` "chain" (the default) against "value" (before 2026-12-02): the tier keeps
    a likely consumer's whole context over an unlikely one's head (issue 12, seeds 0-1 of the
    real-engine benchmark: the value order dropped the last blocks of likely contexts)."""
    orders = {}
    for host_order in ("chain", "value"):
        p = ScriptedPredictor()
        # After B's step (the second): A due next (P 0.9 within 1 step), B less likely.
        p.script[("w1", 2)] = ({"A": (0.9, 0.95, 1.0), "B": (0.3, 0.4, 2.0)}, 0.9)
        h = Harness.make(
            "pbkv",
            predictor=p,
            horizon=2,
            gpu=16,
            cpu=6,
            planner=PlannerConfig(host_plan_blocks=64),
            pbkv=PbkvPolicyConfig(host_order=host_order),
        )
        m = h.manager
        m.start_workflow("w1", "app")
        # A runs a 2-block prompt, then B a 4-block one; both prompts go to the CPU tier
        # (offloaded, then evicted from the GPU) and fill it, so a lost block costs its
        # recompute, not a reload; every block last used at t = 1.
        h.tick(1)
        for agent, hashes in (("A", (b"a0", b"a1")), ("B", (b"b0", b"b1", b"b2", b"b3"))):
            m.step_started("w1", agent)
            _run_to_cpu(h, agent, hashes)
            m.step_finished("w1", ObservedStep(agent))
        orders[host_order] = list(h.plan().host_drop_first)
    # "chain": every block of a context at its consumer's P x the whole context's recompute;
    # A (likely, 2 blocks) outranks B (less likely, 4 blocks), so all of B goes first, tail
    # first, then A, tail first.
    assert orders["chain"] == b("b3", "b2", "b1", "b0", "a1", "a0")
    # "value": a block at P x recomputing it and everything after it, so A's tail (one block
    # at P 0.9) goes before B's head (four blocks at P 0.3): the likely consumer loses its
    # last block to keep the head of a context it may not reuse.
    assert orders["value"] == b("b3", "b2", "b1", "a1", "b0", "a0")
