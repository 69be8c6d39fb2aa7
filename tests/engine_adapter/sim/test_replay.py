"""The workload driver: rounds, parallel groups, arrivals and what the orchestrator is told."""

from __future__ import annotations

import dataclasses

import pytest
from sim_support import COST

from pbkv.engine_adapter.replay import percentile, round_pauses
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine
from pbkv.engine_adapter.sim.replay import PromptCache, ReplayConfig, replay
from pbkv.trace import Segment, Step, Workflow


def step(agent: str, system: int, new: int, out: int, group: str | None = None) -> Step:
    return Step(
        agent,
        (Segment(f"system:{agent}", system), Segment("new", new)),
        out,
        parallel_group=group,
        output_text=f"{agent} says",
    )


def wf(wid: str, steps: list[Step], arrival: float | None = None) -> Workflow:
    return Workflow(wid, "app", tuple(steps), arrival_s=arrival)


class Recorder:
    """Records the orchestrator calls in order (the protocol under test, not a stand-in
    for cache behaviour: no plans come from it)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start_workflow(self, workflow_id, app, *, tenant="default", task="", now_s=None):
        self.calls.append(("start", workflow_id, now_s))

    def step_started(self, workflow_id, agent, *, parallel_group=None, now_s=None):
        self.calls.append(("started", workflow_id, agent, parallel_group, now_s))

    def step_finished(self, workflow_id, s):
        self.calls.append(("finished", workflow_id, s.agent, s.start_s, s.end_s, s.output_text))

    def end_workflow(self, workflow_id, *, now_s=None):
        self.calls.append(("end", workflow_id, now_s))


def engine(gpu_blocks: int = 64) -> SimEngine:
    return SimEngine(EngineConfig(gpu_blocks=gpu_blocks, tokens_per_block=4), COST)


def test_rounds_parallel_groups_and_orchestrator_calls() -> None:
    w = wf(
        "w1",
        [step("a", 8, 2, 1), step("b", 8, 2, 1, "g"), step("c", 8, 2, 1, "g"), step("a", 8, 2, 1)],
    )
    rec = Recorder()
    res = replay(engine(), [w], ReplayConfig(think_time_s=0.5), orchestrator=rec)
    # Round 1: a alone (10 ms prefill). Round 2 at 0.51: b and c batched (20 ms).
    # Round 3 at 1.03: a again, its system prompt's 2 blocks hit (2 tokens computed).
    assert rec.calls == [
        ("start", "w1", 0.0),
        ("started", "w1", "a", None, 0.0),
        ("finished", "w1", "a", 0.0, pytest.approx(0.010), "a says"),
        ("started", "w1", "b", "g", pytest.approx(0.510)),
        ("started", "w1", "c", "g", pytest.approx(0.510)),
        ("finished", "w1", "b", pytest.approx(0.510), pytest.approx(0.530), "b says"),
        ("finished", "w1", "c", pytest.approx(0.510), pytest.approx(0.530), "c says"),
        ("started", "w1", "a", None, pytest.approx(1.030)),
        ("finished", "w1", "a", pytest.approx(1.030), pytest.approx(1.032), "a says"),
        ("end", "w1", pytest.approx(1.032)),
    ]
    assert res.workflows[0].latency_s == pytest.approx(1.032)
    assert res.summary()["recomputed_tokens"] == 10 + 20 + 2
    assert res.engine.gpu_hit_blocks == 2


def test_open_loop_arrivals_and_closed_loop_concurrency() -> None:
    ws = [wf(f"w{i}", [step("a", 4, 4 * (i + 1), 1)], arrival=10.0 + i) for i in range(3)]
    res = replay(engine(), ws)
    # Open loop: arrivals shifted so the first is at 0; each runs alone. Prompts are 8, 12, 16
    # tokens; the later ones hit the shared 4-token system block.
    assert [(w.workflow_id, w.arrival_s) for w in res.workflows] == [
        ("w0", 0.0),
        ("w1", 1.0),
        ("w2", 2.0),
    ]
    assert [w.latency_s for w in res.workflows] == [
        pytest.approx(0.008),
        pytest.approx(0.008),
        pytest.approx(0.012),
    ]
    # Closed loop of 1: back to back, each arrives when the previous ends.
    res = replay(engine(), ws, ReplayConfig(concurrency=1))
    assert [w.arrival_s for w in res.workflows] == [0.0, pytest.approx(0.008), pytest.approx(0.016)]
    assert res.makespan_s == pytest.approx(0.028)


def test_prompt_cache_shares_prompts_and_bad_input() -> None:
    ws = [wf("w", [step("a", 8, 2, 1)])]
    prompts = PromptCache(32_000, 4)
    first = replay(engine(), ws, prompts=prompts)
    second = replay(engine(), ws, prompts=prompts)
    assert first.summary() == second.summary()
    with pytest.raises(ValueError, match="appears twice"):
        replay(engine(), ws + ws)
    with pytest.raises(ValueError, match="no workflows"):
        replay(engine(), [])
    with pytest.raises(ValueError, match="concurrency"):
        ReplayConfig(concurrency=0)


def test_percentile_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 95) == 4.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0


def test_trace_pauses_wait_as_long_as_the_trace_shows() -> None:
    # The trace shows 2.5 s between a's end and the parallel round's start, 0.25 s before
    # the last round (b's end is the round's last). With trace_pauses they add to the think
    # time; without, only the think time is waited.
    timed = [
        dataclasses.replace(step("a", 8, 2, 1), start_s=0.0, end_s=1.0),
        dataclasses.replace(step("b", 8, 2, 1, "g"), start_s=3.5, end_s=4.0),
        dataclasses.replace(step("c", 8, 2, 1, "g"), start_s=3.5, end_s=3.8),
        dataclasses.replace(step("a", 8, 2, 1), start_s=4.25, end_s=5.0),
    ]
    assert round_pauses(wf("w1", timed)) == [0.0, 2.5, 0.25]
    plain = replay(engine(), [wf("w1", timed)], ReplayConfig(think_time_s=0.5))
    paused = replay(engine(), [wf("w1", timed)], ReplayConfig(think_time_s=0.5, trace_pauses=True))
    # As in test_rounds_parallel_groups_and_orchestrator_calls: 1.032 s without pauses.
    assert plain.workflows[0].latency_s == pytest.approx(1.032)
    assert paused.workflows[0].latency_s == pytest.approx(1.032 + 2.5 + 0.25)
    assert round_pauses(wf("w2", [step("a", 8, 2, 1), step("a", 8, 2, 1)])) == [0.0, 0.0]
