"""CacheSage and Continuum, step by step: exact eviction orders and prefetches as the
policies learn online (a transition matrix; a TTL from observed pauses)."""

from __future__ import annotations

import pytest
from cm_helpers import Harness, b

from pbkv.cache_manager.cachesage import START, TransitionMatrix
from pbkv.cache_manager.continuum import ContinuumPolicyConfig, PauseQuantile
from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.predictor.forecast import ObservedStep


def test_first_passage_probabilities_of_a_small_chain() -> None:
    m = TransitionMatrix()
    for prev, nxt in [("A", "B"), ("A", "C"), ("B", "A"), ("C", "C")]:
        m.observe(prev, nxt)
    fp = m.first_passage("A", 3)
    # A -> B or C (1/2 each); B -> A; C -> C.
    assert fp["B"] == pytest.approx((0.5, 0.5, 0.5))  # first passage: only at step 1
    assert fp["C"] == pytest.approx((0.5, 0.5, 0.75))  # or A B A C at step 3
    assert fp["A"] == pytest.approx((0.0, 0.5, 0.5))  # A B A
    assert m.next_distribution(START) == {}


def test_cachesage_learns_the_matrix_online_and_evicts_by_survival() -> None:
    h = Harness.make(
        "cachesage", gpu=8, cpu=8, horizon=1, planner=PlannerConfig(offload_window_blocks=0)
    )
    m = h.manager
    # w0 runs A -> B; w1 runs A -> C: from A, B and C are each next with P 1/2.
    for wid, second in (("w0", "B"), ("w1", "C")):
        m.start_workflow(wid, "app")
        for agent in ("A", second):
            m.step_started(wid, agent)
            m.step_finished(wid, ObservedStep(agent))
        # The policy learns a workflow's steps when the manager next asks for its outlooks
        # (at a plan); several workflows changed before one plan are learned in set order.
        h.plan()
    # w2 runs A -> B too: now P(B | A) = 2/3, P(C | A) = 1/3.
    m.start_workflow("w2", "app")
    h.tick(1)
    m.step_started("w2", "A")
    h.run("w2", "A", (b"a0",))
    m.step_finished("w2", ObservedStep("A"))
    h.tick(2)
    h.run("w2", "C", (b"c0",))
    h.tick(3)
    h.run("w2", "B", (b"b0",))
    # Values: A 0 (never follows A), C 1/3, B 2/3; lowest goes first.
    assert h.order() == b("a0", "c0", "b0")
    m.step_started("w2", "B")
    m.step_finished("w2", ObservedStep("B"))
    # After B nothing was ever seen: every block is worth 0, LRU among equals.
    assert h.order() == b("a0", "c0", "b0")
    # Blocks of a later A -> ? move to the CPU: C is prefetched only if P >= 1/2.
    m.start_workflow("w3", "app")
    m.step_started("w3", "A")
    m.step_finished("w3", ObservedStep("A"))
    h.run("w3", "B", (b"b1",))
    h.run("w3", "C", (b"c1",))
    for blk in (b"b1", b"c1"):
        h.store((blk,), None, Tier.CPU)
        h.evict(blk)
    assert list(h.plan().prefetch) == b("b1")


def test_continuum_evicts_by_pin_expiry_with_a_ttl_per_agent() -> None:
    config = ContinuumPolicyConfig(default_ttl_s=5.0, min_pauses=1, ttl_quantile=1.0)
    h = Harness.make("continuum", gpu=8, cpu=8, continuum=config)
    m = h.manager
    # w1: A ends at 1, B starts at 3 (A's pause: 2 s); B ends at 4, A starts at 14 (B's: 10 s).
    m.start_workflow("w1", "app")
    for agent, start, end in (("A", 0.0, 1.0), ("B", 3.0, 4.0), ("A", 14.0, 15.0)):
        m.step_started("w1", agent)
        m.step_finished("w1", ObservedStep(agent, start_s=start, end_s=end))
    h.plan()  # the manager shows the policy the workflows' new steps
    policy = m.policy
    assert (policy.ttl_s("A"), policy.ttl_s("B"), policy.ttl_s("C")) == (2.0, 10.0, 5.0)
    m.start_workflow("w2", "app")
    m.start_workflow("w3", "app")
    for t, wf, agent, blk in ((20, "w2", "A", "a0"), (21, "w2", "B", "b0"), (22, "w3", "C", "c0")):
        h.tick(t)
        h.run(wf, agent, (blk.encode(),))
    h.tick(23)
    h.run(None, None, (b"n0",))  # anonymous: no pin
    # Pins lapse at a0 22, n0 23, c0 27, b0 31 (LRU would say a0 b0 c0 n0).
    assert h.order() == b("a0", "n0", "c0", "b0")


def test_continuum_ttl_is_the_quantile_of_observed_pauses() -> None:
    q = PauseQuantile(ContinuumPolicyConfig(ttl_quantile=0.8, min_pauses=5, max_ttl_s=9))
    assert q.ttl_s == 2.0  # the default until 5 pauses are seen
    for pause in (4.0, 1.0, 3.0, 2.0):
        q.add(pause)
    assert q.ttl_s == 2.0
    q.add(5.0)  # sorted 1 2 3 4 5: 80% are covered by 4
    assert q.ttl_s == 4.0
    for _ in range(5):
        q.add(20.0)  # capped
    assert q.ttl_s == 9.0
