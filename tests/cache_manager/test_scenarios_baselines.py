"""The baselines' scenarios, step by step as tests/cache_manager/test_scenarios.py does pbkv's:
kvflow's steps-to-execution and write-backs, lru-offload's write-back end, the clairvoyant
policy's farthest-next-use eviction."""

from __future__ import annotations

from cm_helpers import Harness, b, finish

from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.kvflow import KvflowPolicyConfig, rounds_started
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.predictor.forecast import STEP_WINDOW, ObservedStep
from pbkv.trace import Step, Workflow


def test_kvflow_steps_to_execution_from_the_first_run() -> None:
    h = Harness.make(
        "kvflow",
        gpu=8,
        cpu=8,
        kvflow=KvflowPolicyConfig(hold_step=1),
        planner=PlannerConfig(offload_window_blocks=0),
    )
    m = h.manager
    # The app's first run A -> B -> C is its static step graph.
    m.start_workflow("w0", "app")
    for agent in "ABC":
        m.step_started("w0", agent)
        finish(h, "w0", agent)
    m.end_workflow("w0")
    # w1 runs A; its agents' steps-to-execution: B 1, C 2 (capped at hold_step+1 = 2).
    m.start_workflow("w1", "app")
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0",))
    finish(h, "w1", "A")
    h.tick(2)
    h.run("w1", "B", (b"b0",))  # B's prompt seen (from an earlier request, say)
    h.tick(3)
    h.run("w1", "C", (b"c0",))
    # Largest value first, LRU among equals: A (cap 2, oldest), C (2), then B (due next).
    assert h.order() == b("a0", "c0", "b0")
    # B starts: it is in flight (0), C is next (1); A is at the cap.
    m.step_started("w1", "B")
    assert h.order() == b("a0", "c0", "b0")
    finish(h, "w1", "B")
    # After B: C is due next (1), A and B have no known schedule in range (cap 2, by LRU).
    assert h.order() == b("a0", "b0", "c0")
    # A's block moves to the CPU: it is not due within load_ahead_step -> no prefetch;
    # C's block moves to the CPU: due next -> prefetched.
    h.store((b"a0",), None, Tier.CPU)
    h.evict(b"a0")
    h.store((b"c0",), None, Tier.CPU)
    h.evict(b"c0")
    assert list(h.plan().prefetch) == b("c0")


def test_kvflow_writes_back_every_evicted_block() -> None:
    h = Harness.make("kvflow", gpu=2, cpu=4, planner=PlannerConfig(offload_window_blocks=2))
    h.tick(1)
    h.run(None, None, (b"u0", b"u1"))
    # Unknown schedule: both at the cap, same access: the tail goes before its head (as vLLM
    # frees them); both at the eviction end -> write back.
    assert h.order() == b("u1", "u0")
    assert list(h.plan().offload) == b("u1", "u0")


def test_lru_offload_writes_back_the_lru_end() -> None:
    h = Harness.make("lru-offload", gpu=4, cpu=4, planner=PlannerConfig(offload_window_blocks=3))
    h.tick(1)
    h.run(None, None, (b"p0", b"p1"))
    h.tick(2)
    h.run(None, None, (b"q0", b"q1"))
    plan = h.plan()
    # Full GPU (4 of 4): the 3 LRU-most blocks are copied to the CPU ahead of eviction.
    assert plan.evict_first == () and list(plan.offload) == b("p0", "p1", "q0")
    # p0 already has a CPU copy: it is not offloaded again.
    h.store((b"p0",), None, Tier.CPU)
    assert list(h.plan().offload) == b("p1", "q0")


def _wf(wid: str, agents: str) -> Workflow:
    return Workflow(wid, "app", tuple(Step(a, (), 0) for a in agents))


def test_oracle_evicts_farthest_next_use_and_prefetches_perfectly() -> None:
    h = Harness.make("oracle", gpu=8, cpu=8, planner=PlannerConfig(offload_window_blocks=0))
    m = h.manager
    m.set_oracle_future([_wf("w1", "ABCA"), _wf("w2", "CB")])
    m.start_workflow("w1", "app")
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0",))
    finish(h, "w1", "A")
    h.tick(2)
    m.step_started("w1", "B")
    h.run("w1", "B", (b"b0",))
    finish(h, "w1", "B")
    h.tick(3)
    h.run("w1", "D", (b"d0",))  # an agent w1 never calls: never used again
    # Next uses in w1 after step 2: C in 1, A in 2; B never again in w1, but w2 (not yet
    # started) calls B, and b0 is not shared with w2 -> b0 is never used; d0 neither.
    # Never-used go first (LRU among them), then farthest first.
    assert h.order() == b("b0", "d0", "a0")
    # a0 is offloaded and evicted; after C starts, A is next (1 step): prefetched.
    h.store((b"a0",), None, Tier.CPU)
    h.evict(b"a0")
    assert h.plan().prefetch == ()
    m.step_started("w1", "C")
    assert list(h.plan().prefetch) == b("a0")


def test_oracle_with_future_prompt_blocks_is_exact_per_block() -> None:
    prompts = {
        ("w1", 0): b("s", "a0"),
        ("w1", 1): b("s", "b0"),
        ("w1", 2): b("s", "c0"),
        ("w1", 3): b("s", "a0", "a1"),
    }
    h = Harness.make("oracle", gpu=8, cpu=8, planner=PlannerConfig(offload_window_blocks=0))
    m = h.manager
    m.set_oracle_future(
        [_wf("w1", "ABCA")], prompt_blocks=lambda wf, i: prompts[(wf.workflow_id, i)]
    )
    m.start_workflow("w1", "app")
    # Steps 0 (A) and 1 (B) run; s, a0, b0 are cached.
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", tuple(prompts[("w1", 0)]))
    finish(h, "w1", "A")
    h.tick(2)
    m.step_started("w1", "B")
    h.run("w1", "B", tuple(prompts[("w1", 1)]), gpu_hits=1)
    finish(h, "w1", "B")
    # Next uses from step 2: s at step 2 (1 step), a0 at step 3 (2 steps), b0 never.
    assert h.order() == b("b0", "a0", "s")
    # a0 goes to the CPU; when step 2 (C) starts, a0 is due next: prefetched.
    h.store((b"a0",), b"s", Tier.CPU)
    h.evict(b"a0")
    assert h.plan().prefetch == ()
    m.step_started("w1", "C")
    assert list(h.plan().prefetch) == b("a0")


def test_kvflow_counts_every_round_of_a_workflow_longer_than_the_step_window() -> None:
    # 200 steps, far past the 128-step WorkflowState window: rounds of one agent (A, B, C in
    # turn), every fifth round a parallel pair (P, Q) that is one round: 6 steps per 5 rounds,
    # so the 200 steps are 33 * 5 + 2 = 167 rounds.
    plan = [("P", "Q") if r % 5 == 4 else ("ABC"[r % 3],) for r in range(180)]
    steps = [(a, f"g{r}" if len(rs) > 1 else None) for r, rs in enumerate(plan) for a in rs]
    steps = steps[:200]
    assert STEP_WINDOW < 200
    h = Harness.make("kvflow", gpu=8, cpu=8, kvflow=KvflowPolicyConfig(hold_step=2))
    m = h.manager

    def run(wid: str, some: list[tuple[str, str | None]]) -> None:
        for agent, group in some:
            m.step_started(wid, agent, parallel_group=group)
            m.step_finished(wid, ObservedStep(agent, parallel_group=group))

    m.start_workflow("w0", "app")
    run("w0", steps)
    wf = m._workflows["w0"]
    assert wf.state.step_index == 200 and len(wf.state.steps) == STEP_WINDOW
    assert rounds_started(wf) == 167
    m.step_started("w0", "B")  # a step of no group starts a round
    assert rounds_started(wf) == 168
    m.step_finished("w0", ObservedStep("B"))
    m.end_workflow("w0")
    # The first run is the app's graph, known from the round its window starts at.
    first, graph = m.policy.graphs["app"]
    assert first + len(graph) == 168 and len(graph) < 168
    assert [set(r) for r in graph[-3:]] == [{"A"}, {"B"}, {"B"}]  # rounds 165, 166, 167
    # A second run after 198 steps (165 rounds) expects rounds 165..167 next: A, then B.
    m.start_workflow("w1", "app")
    run("w1", steps[:198])
    w1 = m._workflows["w1"]
    assert rounds_started(w1) == 165
    assert {a: o.eta_steps for a, o in m.policy.outlooks(w1).items()} == {"A": 1.0, "B": 2.0}
