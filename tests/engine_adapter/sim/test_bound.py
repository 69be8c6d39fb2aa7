"""The offline latency bound (engine_adapter/sim/bound.py): exact where nothing is left to
relax, raised by capacity where holds do not fit, and below every policy's replay."""

from __future__ import annotations

import pytest
from sim_support import COST

from pbkv.engine_adapter.sim.bound import latency_bound
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine
from pbkv.engine_adapter.sim.replay import PromptCache, ReplayConfig, replay
from pbkv.trace import Segment, Step, Workflow


def two_rounds(wid: str, history: int = 6) -> Workflow:
    """Round 1: system:a (8 tokens = 2 blocks) + 5 new, 3 output tokens. Round 2: the same
    system prompt, then ``history`` tokens of this workflow's own history, then 3 new."""
    first = Step("a", (Segment("system:a", 8), Segment("new", 5)), 3)
    second = Step(
        "a",
        (Segment("system:a", 8), Segment(f"history:{wid}", history), Segment("new", 3)),
        2,
    )
    return Workflow(wid, "app", (first, second))


def bound_and_replay(workflows, gpu_blocks, cpu_blocks=0, concurrency=1, think=0.0):
    prompts = PromptCache(32_000, 4)
    config = EngineConfig(gpu_blocks=gpu_blocks, cpu_blocks=cpu_blocks, tokens_per_block=4)
    rc = ReplayConfig(concurrency=concurrency, think_time_s=think)
    bound = latency_bound(workflows, prompts, COST, config, rc)
    result = replay(SimEngine(config, COST), workflows, rc, prompts=prompts)
    return bound, result


def test_one_workflow_alone_is_exact() -> None:
    # Round 1 computes all 13 tokens (13 ms) and decodes 2 more tokens (2 ms); round 2 hits
    # the system prompt's 2 blocks (the only blocks it shares with round 1), computes
    # 17 - 8 = 9 tokens (9 ms) and decodes 1 token (1 ms): 25 ms, 13 + 9 = 22 recomputed.
    # Alone on a roomy GPU the engine does exactly that, so the bound is attained.
    bound, result = bound_and_replay([two_rounds("w0")], gpu_blocks=64)
    assert bound.mean_latency_s == pytest.approx(0.025)
    assert bound.recomputed_tokens == 22
    assert result.mean_latency_s == pytest.approx(0.025)
    assert result.summary()["recomputed_tokens"] == 22


def test_history_of_a_later_round_is_hittable() -> None:
    # Three rounds where round 3 repeats round 2's prompt: round 3 may hit round 2's blocks
    # except the last (the last prompt token is always computed).
    wid = "w0"
    second = (Segment("system:a", 8), Segment(f"history:{wid}", 8), Segment("new", 4))
    steps = (
        Step("a", (Segment("system:a", 8), Segment("new", 4)), 1),
        Step("a", second, 1),
        Step("a", second, 1),
    )
    bound, result = bound_and_replay([Workflow(wid, "app", steps)], gpu_blocks=64)
    # 12 + (20 - 8) + 4 (the last block of a block-aligned prompt) computed.
    assert bound.recomputed_tokens == 12 + 12 + 4
    assert result.summary()["recomputed_tokens"] == 28
    assert bound.mean_latency_s == pytest.approx(result.mean_latency_s)


def test_capacity_raises_the_bound_when_holds_do_not_fit() -> None:
    # Eight workflows, two at a time, each re-reading its own 40-token history (10 blocks)
    # after a 1 s pause. 14 blocks (one request's worth) cannot hold two histories through
    # the pauses; 200 can. Only the latency bound depends on capacity.
    wfs = []
    for i in range(8):
        wid = f"w{i}"
        prompt = (Segment("system:a", 8), Segment(f"history:{wid}", 40))
        again = (*prompt, Segment("new", 3))
        wfs.append(Workflow(wid, "app", (Step("a", prompt, 2), Step("a", again, 2))))
    tight, tight_run = bound_and_replay(wfs, gpu_blocks=14, concurrency=2, think=1.0)
    roomy, roomy_run = bound_and_replay(wfs, gpu_blocks=200, concurrency=2, think=1.0)
    assert tight.capacity_binds and not roomy.capacity_binds
    assert tight.mean_latency_s > roomy.mean_latency_s
    assert tight.recomputed_tokens == roomy.recomputed_tokens  # capacity-free (see bound.py)
    for bound, run in ((tight, tight_run), (roomy, roomy_run)):
        assert bound.mean_latency_s <= run.mean_latency_s
        assert bound.recomputed_tokens <= run.summary()["recomputed_tokens"]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="no workflows"):
        latency_bound([], PromptCache(32_000, 4), COST, EngineConfig(gpu_blocks=8), ReplayConfig())
    with pytest.raises(ValueError, match="tokens_per_block"):
        latency_bound(
            [two_rounds("w0")],
            PromptCache(32_000, 16),
            COST,
            EngineConfig(gpu_blocks=8, tokens_per_block=4),
            ReplayConfig(),
        )


def test_in_use_memory_orders_requests_that_cannot_run_together() -> None:
    # Two one-request workflows, each a private 24-token prompt (6 blocks) and 9 output
    # tokens: 9 slots each, and the GPU has 9, so the second waits for the first. Alone each
    # takes 24 ms of prefill and 8 decode iterations (32 ms): x ends at 32 ms, y at 64 ms,
    # mean 48 ms. Critical paths: mean 32 ms; work (24 ms each plus half of 8 ms of decode
    # iterations): f_1 >= 28, f_2 >= 56, mean 42 ms. In-use memory: each request holds its
    # 9 slots for at least 32 ms (288 block-ms); 9 slots give f_1 >= 32 and f_2 >= 64 ms:
    # mean 48 ms, exact.
    wfs = [Workflow(w, "app", (Step("a", (Segment(f"history:{w}", 24),), 9),)) for w in ("x", "y")]
    bound, result = bound_and_replay(wfs, gpu_blocks=9, concurrency=2)
    assert bound.critical_path_mean_s == pytest.approx(0.032)
    assert bound.work_mean_s == pytest.approx(0.042)
    assert bound.finish_order_mean_s == pytest.approx(0.048)
    assert result.mean_latency_s == pytest.approx(0.048)
    assert sorted(w.latency_s for w in result.workflows) == pytest.approx([0.032, 0.064])
