"""Scripted scenarios: exact eviction orders, step by step (one comment per step).

Every block is 4 tokens; ``Harness.order()`` is the engine's full GPU eviction order under the
current plan, first out first; the directory's invariants are checked after every event.
"""

from __future__ import annotations

import pytest
from cm_helpers import ENGINE, Harness, b, finish
from support import ScriptedPredictor

from pbkv.cache_manager.accuracy import AccuracyConfig
from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.planner import PlannerConfig

# pbkv's two value models (``ScorerConfig.value_model``): "survival" (pbkv-survival)
# prices every block of a prompt at the same share of its recompute, so one chain's blocks
# leave together, tail first; "prefix" (pbkv, the default) prices a block at the
# recompute of itself and everything behind it, so chains interleave by depth.
VALUE_MODELS = pytest.mark.parametrize("policy", ["pbkv-survival", "pbkv"])


@VALUE_MODELS
def test_pbkv_shared_prefixes_and_a_workflow_finishing(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.05, 0.1, None), "B": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w2", 1)] = ({"A": (0.8, 0.9, 1.0), "B": (0.1, 0.2, None)}, 0.9)
    p.script[("w1", 2)] = ({"A": (0.9, 0.95, 1.0), "B": (0.05, 0.1, None)}, 0.9)
    h = Harness.make(policy, predictor=p, horizon=2)
    m = h.manager
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    # w1 runs agent A: system prompt sA0 sA1, then its own block; the parent is worth more
    # than its child (losing it loses everything after it), so it goes last.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"sA0", b"sA1", b"w1x"))
    assert h.order() == b("w1x", "sA1", "sA0")
    # w1's forecast: B next, A unlikely -- its A-only block stays first out.
    finish(h, "w1", "A")
    assert h.order() == b("w1x", "sA1", "sA0")
    # w2 runs A over the same system prompt (a GPU hit): sA0 sA1 become agent A's shared
    # prefix, consumed by A in every workflow of the app; w2 expects A again soon, so w2x
    # outranks w1x; the shared prefix outranks both.
    h.tick(2)
    m.step_started("w2", "A")
    h.run("w2", "A", (b"sA0", b"sA1", b"w2x"), gpu_hits=2)
    finish(h, "w2", "A")
    assert h.order() == b("w1x", "w2x", "sA1", "sA0")
    top = m.top_kept(10)
    assert [s.block_hash for s in top] == b("sA0", "sA1", "w2x", "w1x")
    assert top[0].consumers == 2 and top[0].eta_steps == 1.0
    # w1 runs B (new system prompt sB0 and history h1); afterwards A is due in w1, B is not,
    # so B's blocks go first and w1x now outranks w2x (0.95 vs 0.9 for A).
    h.tick(3)
    m.step_started("w1", "B")
    h.run("w1", "B", (b"sB0", b"h1"))
    finish(h, "w1", "B")
    assert h.order() == b("h1", "sB0", "w2x", "w1x", "sA1", "sA0")
    # w1 ends: w1x, used only by w1 and outside A's shared prefix, is dead and goes first.
    # B's blocks may still be B's system prompt (no second workflow has run B yet), so they
    # are not dead: with no forecast left they rank on recency alone (just used). Survival:
    # both B blocks at the same value, below w2x; prefix: h1 below w2x, sB0 (losing it
    # loses both B blocks) above it. A's shared prefix stays last.
    m.end_workflow("w1")
    plan = h.plan()
    want = {
        "pbkv-survival": b("w1x", "h1", "sB0", "w2x", "sA1", "sA0"),
        "pbkv": b("w1x", "h1", "w2x", "sB0", "sA1", "sA0"),
    }[policy]
    assert list(plan.evict_first) == want
    assert h.order() == want
    # The dashboard's "top kept" lists only blocks a consumer keeps: sB0 (recency alone, no
    # consumer) used to show there as P(reuse) 1.000 with 0 consumers.
    assert m.stats().top_kept == m.top_kept(10) == m.top_kept(10, ENGINE)
    top = m.top_kept(10)
    assert [s.block_hash for s in top] == b("sA0", "sA1", "w2x")
    assert all(s.consumers > 0 and s.score > 0 for s in top)


@VALUE_MODELS
def test_pbkv_forecast_change_cancels_prefetch_and_reorders(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.9, 0.95, 1.0), "B": (0.1, 0.2, None)}, 0.9)
    p.script[("w1", 2)] = ({"A": (0.05, 0.1, None), "B": (0.9, 0.95, 1.0)}, 0.9)
    h = Harness.make(
        policy, predictor=p, horizon=2, gpu=4, cpu=8, planner=PlannerConfig(offload_window_blocks=2)
    )
    m = h.manager
    m.start_workflow("w1", "app")
    # A runs and finishes; A is forecast next again.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0", b"a1"))
    finish(h, "w1", "A")
    plan = h.plan()
    assert h.order() == b("a1", "a0") and plan.prefetch == ()
    # The eviction end (a window of 2 blocks) gets CPU copies ahead of any eviction.
    assert list(plan.offload) == b("a1", "a0")
    # B runs and fills the GPU: the two blocks now at the eviction end are to be offloaded
    # (survival: A's whole prompt, less likely than B's in flight; prefix: the two tails).
    h.tick(2)
    m.step_started("w1", "B")
    h.run("w1", "B", (b"b0", b"b1"))
    plan = h.plan()
    want = {"pbkv-survival": b("a1", "a0", "b1", "b0"), "pbkv": b("a1", "b1", "a0", "b0")}[policy]
    assert h.order() == want
    assert list(plan.offload) == want[:2]
    # The engine copies A's blocks to the CPU and evicts them from the GPU. The GPU has just
    # evicted, so its two free slots are transient and A's blocks (worth a reload, less than
    # B's) would be the first an admission evicts: no prefetch yet.
    h.store((b"a0", b"a1"), None, Tier.CPU)
    h.evict(b"a0", b"a1")
    plan = h.plan()
    assert h.order() == b("b1", "b0") and plan.prefetch == ()
    # More than evicting_window_s (1 s) later with no eviction since, the free slots are
    # free: A is still due next, so the plan prefetches A's blocks there, the parent first.
    h.tick(3.5)
    plan = h.plan()
    assert h.order() == b("b1", "b0") and list(plan.prefetch) == b("a0", "a1")
    # B finishes and the forecast changes (B again, A unlikely): the prefetch is cancelled.
    finish(h, "w1", "B")
    plan = h.plan()
    assert plan.prefetch == () and h.order() == b("b1", "b0")


def test_pbkv_prefetch_never_displaces_a_block_worth_more() -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w2", 1)] = ({"C": (0.9, 0.95, 1.0)}, 0.9)
    h = Harness.make(
        "pbkv", predictor=p, horizon=2, gpu=3, cpu=8, planner=PlannerConfig(offload_window_blocks=0)
    )
    m = h.manager
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    m.start_workflow("w3", "app")
    # w3 runs C first with a prompt nothing shares (not cached): C's prompts share no prefix
    # across workflows, so w2's C blocks below will be w2's alone.
    m.step_started("w3", "C")
    h.run("w3", "C", (b"q0",), store=False)
    # w1's A blocks sit on the CPU only; A is due next in w1.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0", b"a1"))
    finish(h, "w1", "A")
    h.store((b"a0", b"a1"), None, Tier.CPU)
    h.evict(b"a0", b"a1")
    # w2's C blocks fill the GPU (3 slots), C is due next in w2 too, and they are worth more
    # (deeper chain, never reloaded): no slot is free and no prefetch may push them out.
    h.tick(2)
    m.step_started("w2", "C")
    h.run("w2", "C", (b"c0", b"c1", b"c2"))
    finish(h, "w2", "C")
    plan = h.plan()
    assert h.order() == b("c2", "c1", "c0") and plan.prefetch == ()
    # w2 ends: its blocks are dead (evict_first, same access: tail first, so no head goes
    # before its tail) and now the prefetch displaces them.
    m.end_workflow("w2")
    plan = h.plan()
    assert list(plan.evict_first) == b("c2", "c1", "c0")
    assert list(plan.prefetch) == b("a0", "a1")


def test_prefetch_while_evicting_must_outrank_the_queue_head() -> None:
    """Issue 12 (ChatDev under pressure): free slots fill with prefetches that the next
    admission evicts unused (precision ~1%, ~50x lru-offload's host-link bytes). While the GPU
    is evicting, a prefetch into a free slot must outrank a block evicted before it."""
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w2", 1)] = ({"C": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w3", 1)] = ({"D": (0.0, 0.0, None)}, 0.9)
    h = Harness.make(
        "pbkv", predictor=p, horizon=2, gpu=4, cpu=8, planner=PlannerConfig(offload_window_blocks=0)
    )
    m = h.manager
    for wf in ("w1", "w2", "w3"):
        m.start_workflow(wf, "app")
    # w1 runs A (a0 a1); A is due next in w1.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0", b"a1"))
    finish(h, "w1", "A")
    # w3 runs D (d0); D is not expected again: d0 is worth 0, first out.
    m.step_started("w3", "D")
    h.run("w3", "D", (b"d0",))
    finish(h, "w3", "D")
    # The engine copies A's blocks to the CPU and evicts them (at t=1).
    h.store((b"a0", b"a1"), None, Tier.CPU)
    h.evict(b"a0", b"a1")
    # w2 runs C (c0, worth a recompute: more than A's blocks, worth a reload). 2 slots free.
    m.step_started("w2", "C")
    h.run("w2", "C", (b"c0",))
    finish(h, "w2", "C")
    plan = h.plan()
    assert h.order() == b("d0", "c0")
    # Evicting: a0 outranks d0 (worth 0), so it takes a free slot with d0 to go before it; a1
    # would go before c0, so it waits, though a slot is free.
    assert list(plan.prefetch) == b("a0")
    # Half a second later: still within the window.
    h.tick(1.5)
    assert list(h.plan().prefetch) == b("a0")
    # 1.5 s after the eviction (window 1 s) the free slots are free again: both are loaded.
    h.tick(2.5)
    assert list(h.plan().prefetch) == b("a0", "a1")


@VALUE_MODELS
def test_pbkv_burst_over_capacity_evicts_least_valuable(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w2", 1)] = ({"A": (0.2, 0.3, None)}, 0.9)
    h = Harness.make(policy, predictor=p, horizon=2, gpu=6, cpu=0)
    m = h.manager
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    # Two workflows' prompts (2 blocks each) and an anonymous one fill 6 slots.
    h.tick(1)
    for wf, x in (("w1", "x"), ("w2", "y")):
        m.step_started(wf, "A")
        h.run(wf, "A", (f"{x}0".encode(), f"{x}1".encode()))
        finish(h, wf, "A")
    h.tick(2)
    h.run(None, None, (b"z0", b"z1"))
    # The anonymous blocks have no forecast: recency alone ranks them (just used: p ~ 1),
    # above w2's blocks, which w2 is confidently unlikely to reuse, below w1's (A is next).
    # Within each chain the child goes before its parent. Survival: a chain's blocks share
    # one value, so the chains leave whole; prefix: chains interleave by depth (z0 saves the
    # recompute of both z blocks).
    want = {
        "pbkv-survival": b("y1", "y0", "z1", "z0", "x1", "x0"),
        "pbkv": b("y1", "y0", "z1", "x1", "z0", "x0"),
    }[policy]
    assert h.order() == want
    # A burst of 5 new blocks arrives: the engine evicts the first 5 in that order.
    victims = h.order()[:5]
    h.evict(*victims)
    assert victims == want[:5]
    # The directory refuses a store beyond the GPU capacity, atomically.
    h.store((b"n0",), None, Tier.GPU)
    h.store(tuple(b("n1", "n2", "n3", "n4")), b"n0", Tier.GPU)
    try:
        h.store((b"n5",), b"n4", Tier.GPU)
    except ValueError as e:
        assert "capacity" in str(e)
    else:
        raise AssertionError("store beyond capacity accepted")
    h.manager.check_integrity()
    assert h.manager.stats().gpu_blocks_cached == 6


def test_pbkv_falls_back_to_lru_when_accuracy_drops_and_returns() -> None:
    p = ScriptedPredictor()
    for i in range(1, 12):
        p.script[("w1", i)] = ({"A": (0.9, 0.95, 1.0), "B": (0.1, 0.2, None)}, 0.9)
    h = Harness.make(
        "pbkv",
        predictor=p,
        horizon=2,
        accuracy=AccuracyConfig(window=4, min_samples=4, fallback_below=0.5, recover_at=0.75),
    )
    m = h.manager
    m.start_workflow("w1", "app")
    # Blocks: "a" used by A (forecast to be next, so kept last), "bb" by B, used later.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a",))
    finish(h, "w1", "A")
    h.tick(2)
    m.step_started("w1", "B")  # forecast said A: miss 1
    h.run("w1", "B", (b"bb",))
    finish(h, "w1", "B")
    assert h.order() == b("bb", "a")  # scorer order: a is forecast, bb is not
    assert [s.block_hash for s in m.top_kept(10)] == b("a", "bb")
    # Three more misses: top-1 accuracy 0/4 < 0.5 -> plain LRU (a is older than bb).
    for t in (3, 4, 5):
        h.tick(t)
        m.step_started("w1", "B")
        finish(h, "w1", "B")
    plan = h.plan()
    assert plan.fallback_lru and plan.evict_first == ()
    assert m.top_kept(10) == ()  # the dashboard shows no scores while plain LRU rules
    assert m.stats().fallback_lru and m.stats().predictor_top1_accuracy == 0.0
    assert h.order() == b("a", "bb")
    # Two hits: 2/4 = 0.5 is not yet back at 0.75 (hysteresis), still LRU.
    for t in (6, 7):
        h.tick(t)
        m.step_started("w1", "A")
        finish(h, "w1", "A")
    assert h.plan().fallback_lru
    # A third hit: 3/4 = 0.75 -> the scorer's plan is back.
    h.tick(8)
    m.step_started("w1", "A")
    finish(h, "w1", "A")
    plan = h.plan()
    assert not plan.fallback_lru and h.order() == b("bb", "a")
    s = m.stats()
    assert s.predictor_samples == 4 and s.predictor_top1_accuracy == 0.75
    assert s.predictor_brier is not None and 0.0 < s.predictor_brier < 2.0
