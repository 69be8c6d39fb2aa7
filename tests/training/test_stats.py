"""Trace statistics: exact entropies and tables on hand-made workflows."""

from __future__ import annotations

import math

import pytest

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.stats import (
    END,
    START,
    app_stats,
    conditional_entropy,
    format_app_stats,
    trace_stats,
)


def wf(
    workflow_id: str,
    agents: list[str],
    app: str = "demo",
    phase: str | None = None,
    group: str | None = None,
) -> Workflow:
    steps = tuple(
        Step(
            agent=a,
            prompt=(Segment(f"system:{a}", 10), Segment("history:h", 5 * i), Segment("new", 1)),
            output_tokens=2 * (i + 1),
            phase=phase,
            parallel_group=group,
        )
        for i, a in enumerate(agents)
    )
    return Workflow(workflow_id=workflow_id, app=app, steps=steps)


def test_fixed_pipeline_has_zero_conditional_entropy():
    stats = app_stats("demo", [wf(f"w{i}", ["a", "b", "c"]) for i in range(5)])
    assert stats.entropy_given_prev_bits == 0.0
    assert stats.entropy_given_prev2_bits == 0.0
    # outcomes a, b, c, <end> equally often: 2 bits
    assert stats.entropy_next_bits == pytest.approx(2.0)
    assert stats.transitions == ((START, "a", 5), ("a", "b", 5), ("b", "c", 5), ("c", END, 5))


def test_branch_after_a_costs_one_bit_in_its_share_of_transitions():
    stats = app_stats("demo", [wf("w1", ["a", "b"]), wf("w2", ["a", "c"])])
    # 6 transitions; only the two after "a" are uncertain (1 bit each): 2/6 bit
    assert stats.entropy_given_prev_bits == pytest.approx(1 / 3)
    # outcomes a 2, b 1, c 1, <end> 2 out of 6
    expected = -(2 * (2 / 6) * math.log2(2 / 6) + 2 * (1 / 6) * math.log2(1 / 6))
    assert stats.entropy_next_bits == pytest.approx(expected)


def test_two_step_context_resolves_a_loop_that_one_step_cannot():
    # after "r": go back to "w" the first time, end the second time; (w, r) vs (r..)?
    # sequence w r w r: contexts (start,w)->r, (w,r)->w, (r,w)->r, (w,r)->end
    stats = app_stats("demo", [wf("w1", ["w", "r", "w", "r"])])
    assert stats.entropy_given_prev_bits == pytest.approx(2 / 5)  # after r: w or end
    assert stats.entropy_given_prev2_bits == pytest.approx(2 / 5)  # (w, r) still ambiguous
    stats3 = app_stats(
        "demo", [wf("w1", ["p", "w", "r", "w", "r"]), wf("w2", ["p", "w", "r", "w", "r"])]
    )
    assert stats3.entropy_given_prev_bits > 0


def test_conditional_entropy_from_counts():
    assert conditional_entropy({}) == 0.0
    assert conditional_entropy({("x", "a"): 3, ("x", "b"): 3}) == pytest.approx(1.0)
    assert conditional_entropy({("x", "a"): 3, ("y", "b"): 3}) == 0.0


def test_summaries_tokens_phases_and_parallel_steps():
    stats = app_stats("demo", [wf("w1", ["a", "b"], phase="code", group="g"), wf("w2", ["a"])])
    assert stats.workflows == 2 and stats.steps == 3
    assert stats.agent_steps == (("a", 2), ("b", 1))
    assert (stats.steps_per_workflow.minimum, stats.steps_per_workflow.maximum) == (1, 2)
    # inputs: a 10+0+1, b 10+5+1, a 11 -> 11, 16, 11
    assert stats.input_tokens_per_step.total == 38
    assert stats.input_tokens_per_step.median == 11
    assert stats.output_tokens_per_step.total == 2 + 4 + 2
    assert dict(stats.prompt_tokens_by_kind) == {"system": 30, "history": 5, "new": 3}
    assert stats.phases == (("code", 2),)
    assert stats.parallel_steps == 2
    d = stats.to_dict()
    assert d["steps_per_workflow"]["median"] == 1.5
    assert d["agent_steps"] == [["a", 2], ["b", 1]]


def test_trace_stats_groups_by_app_and_formats_a_table():
    stats = trace_stats([wf("w1", ["a", "b"], app="z"), wf("w2", ["a"], app="y")])
    assert [s.app for s in stats] == ["y", "z"]
    text = format_app_stats(stats[1])
    assert "app z: 1 workflows, 2 steps, 2 agents" in text
    assert "H(next|prev) 0.00" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[-3:]}
    # columns: a, b, <end>
    assert rows == {"<start>": ["1", ".", "."], "a": [".", "1", "."], "b": [".", ".", "1"]}


def test_table_folds_rare_agents():
    stats = app_stats("demo", [wf("w1", ["a", "a", "b", "c"])])
    text = format_app_stats(stats, max_table_agents=1)
    assert "(other)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[-3:]}
    # columns: a, (other), <end>
    assert rows == {"<start>": ["1", ".", "."], "a": ["1", "1", "."], "(other)": [".", "1", "1"]}
