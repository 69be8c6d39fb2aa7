"""Engine mechanics with exact outcomes, step by step (tiny blocks of 4 tokens, 1 byte/token).

Cost model here: prefill 1 ms per token, decode 1 ms per step, 4-token blocks of 4 bytes, and
a host link of 4 bytes/s, so one block takes exactly 1 s to move.
"""

from __future__ import annotations

import pytest
from sim_support import COST, H

from pbkv.cache_manager.events import (
    BlockRemoved,
    BlockStored,
    CachePlan,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine, SimRequest


class Rig:
    """An engine with a recording sink and a settable plan."""

    def __init__(self, gpu_blocks: int, cpu_blocks: int = 0, **kw) -> None:
        self.events: list = []
        self.plan: CachePlan | None = None
        cfg = EngineConfig(gpu_blocks=gpu_blocks, cpu_blocks=cpu_blocks, tokens_per_block=4, **kw)
        self.engine = SimEngine(cfg, COST, sink=self.events.append, plans=lambda _id: self.plan)

    def run_one(self, rid: str, tokens: list[int], output_tokens: int = 1):
        self.engine.submit(SimRequest(rid, tuple(tokens), output_tokens, "w", "a"))
        done = self.engine.run()
        self.engine.check_integrity()
        assert [r.request_id for r in done] == [rid]
        return done[0]

    def removed(self, tier: Tier = Tier.GPU) -> list[bytes]:
        return [
            h
            for e in self.events
            if isinstance(e, BlockRemoved) and e.tier is tier
            for h in e.block_hashes
        ]

    def stored(self, tier: Tier) -> list[bytes]:
        return [
            h
            for e in self.events
            if isinstance(e, BlockStored) and e.tier is tier
            for h in e.block_hashes
        ]


def toks(seed: int, n_blocks: int, extra: int = 1) -> list[int]:
    """``n_blocks`` full blocks of distinct tokens plus ``extra`` tokens."""
    return [1000 * seed + i for i in range(4 * n_blocks + extra)]


def test_prefix_hits_and_events() -> None:
    rig = Rig(gpu_blocks=16)
    a = toks(1, 2)  # 9 tokens: 2 full blocks + 1
    r = rig.run_one("a", a)
    # Cold: nothing hit, both full blocks computed and stored in chain order.
    assert (r.gpu_hit_blocks, r.computed_prompt_tokens) == (0, 9)
    stored = [e for e in rig.events if isinstance(e, BlockStored)]
    assert stored == [BlockStored("sim0", tuple(H(a)), None, 4, Tier.GPU)]
    # Same prefix plus more: both blocks hit, only the rest computed.
    b = a[:8] + [7, 7, 7, 7, 7]
    r = rig.run_one("b", b)
    assert (r.gpu_hit_blocks, r.computed_prompt_tokens) == (2, 5)
    started = [e for e in rig.events if isinstance(e, RequestStarted)]
    assert started[1].block_hashes == tuple(H(b)) and started[1].num_gpu_hit_blocks == 2
    assert (started[1].workflow_id, started[1].agent) == ("w", "a")
    # b's third block chains to a's second block.
    assert rig.events[-2] == BlockStored("sim0", (H(b)[2],), H(a)[1], 4, Tier.GPU)
    assert isinstance(rig.events[-1], RequestFinished)
    # A block-aligned prompt that is fully cached still computes its last token.
    r = rig.run_one("c", a[:8])
    assert (r.gpu_hit_blocks, r.computed_prompt_tokens) == (1, 4)
    s = rig.engine.stats()
    # Lookups: every full prompt block (2 for a, 3 for b, 2 for c).
    assert (s.lookup_blocks, s.gpu_hit_blocks, s.requests_finished) == (2 + 3 + 2, 3, 3)


def test_lru_eviction_order_reverse_freed() -> None:
    rig = Rig(gpu_blocks=5)
    a, b = toks(1, 2), toks(2, 2)
    rig.run_one("a", a)  # a0 a1 cached (+1 uncached slot freed); free order: a1, a0
    rig.run_one("b", b)  # b0 b1 cached; free order: a1 a0 b1 b0
    assert rig.engine.evictable() == [H(a)[1], H(a)[0], H(b)[1], H(b)[0]]
    # c needs 3 slots, 1 is free: evicts a's tail first, then a's head.
    rig.run_one("c", toks(3, 2))
    assert rig.removed() == [H(a)[1], H(a)[0]]
    # A hit refreshes recency: b is used again, so c goes before b next time.
    rig.run_one("b2", b)
    rig.run_one("d", toks(4, 2))
    assert rig.removed()[2:] == [H(toks(3, 2))[1], H(toks(3, 2))[0]]


def test_plan_orders_eviction_evict_first_then_lru() -> None:
    rig = Rig(gpu_blocks=7)
    a, b, c, d = toks(1, 2), toks(2, 2), toks(3, 2), toks(4, 3)
    for rid, t in (("a", a), ("b", b), ("c", c)):
        rig.run_one(rid, t)
    # LRU order is a1 a0 b1 b0 c1 c0 (1 slot free). The plan evicts c1 then b0 first and
    # leaves a, b1 and c0 to LRU.
    assert rig.engine.evictable() == [H(a)[1], H(a)[0], H(b)[1], H(b)[0], H(c)[1], H(c)[0]]
    rig.plan = CachePlan("sim0", 1, evict_first=(H(c)[1], H(b)[0]))
    # d needs 4 slots, 1 is free: c1, b0 (evict_first), then unnamed by LRU: a1.
    rig.run_one("d", d)
    assert rig.removed() == [H(c)[1], H(b)[0], H(a)[1]]
    # A burst of 6 slots (1 free): the plan's blocks are gone, so LRU: a0 b1 c0 d2 d1.
    rig.run_one("e", toks(5, 5))
    assert rig.removed()[3:] == [H(a)[0], H(b)[1], H(c)[0], H(d)[2], H(d)[1]]
    assert H(d)[0] in rig.engine.gpu_cached()


def test_fallback_or_stale_plan_means_plain_lru() -> None:
    rig = Rig(gpu_blocks=5, plan_max_age_s=1.0)
    a, b = toks(1, 2), toks(2, 2)
    rig.run_one("a", a)
    rig.run_one("b", b)
    # A plan that says "evict b first" but is flagged fallback_lru: ignored, LRU evicts a1.
    rig.plan = CachePlan("sim0", 1, evict_first=(H(b)[1], H(b)[0]), fallback_lru=True)
    rig.run_one("c", toks(3, 1))  # 2 slots, 1 free
    assert rig.removed() == [H(a)[1]]
    # The same plan unflagged but created 5 s ago (max age 1 s): stale, LRU evicts a0.
    rig.plan = CachePlan(
        "sim0", 2, evict_first=(H(b)[1], H(b)[0]), created_s=rig.engine.now_s - 5.0
    )
    rig.run_one("d", toks(4, 1))
    assert rig.removed() == [H(a)[1], H(a)[0]]
    # Fresh: obeyed, b1 goes although b0 is older.
    rig.plan = CachePlan("sim0", 3, evict_first=(H(b)[1],), created_s=rig.engine.now_s)
    rig.run_one("e", toks(5, 1))
    assert rig.removed() == [H(a)[1], H(a)[0], H(b)[1]]


def test_in_use_blocks_are_not_evicted_and_requests_wait() -> None:
    rig = Rig(gpu_blocks=5)
    a = toks(1, 2)
    rig.engine.submit(SimRequest("long", tuple(a), 8, "w", "a"))  # 9 + 8 tokens: 5 slots
    rig.engine.submit(SimRequest("short", tuple(toks(2, 3)), 1, "w", "b"))  # 14: 4 slots
    # After long's 9 ms prefill: its blocks are cached but in use, so not evictable.
    assert rig.engine.run(until_s=0.005) == []
    rig.engine.check_integrity()
    assert rig.engine.gpu_cached() == H(a) and rig.engine.evictable() == []
    # long decodes 7 more tokens (1 ms each); short waits for the slots.
    done = rig.engine.run()
    assert [(r.request_id, r.finish_s) for r in done] == [("long", pytest.approx(0.016))]
    # Then short is admitted: 3 slots free, LRU evicts long's tail a1 for the 4th.
    done = rig.engine.run()
    rig.engine.check_integrity()
    assert [(r.request_id, r.admit_s, r.finish_s) for r in done] == [
        ("short", pytest.approx(0.016), pytest.approx(0.029))
    ]
    assert rig.removed() == [H(a)[1]]


def test_offload_on_eviction_then_cpu_hit_reload() -> None:
    rig = Rig(gpu_blocks=3, cpu_blocks=4, transfer_window_s=0.0)
    a = toks(1, 2)
    rig.run_one("a", a)  # t=0.009: a0 a1 cached, 1 slot free
    rig.plan = CachePlan("sim0", 1, offload=tuple(H(a)))
    r = rig.run_one("b", toks(2, 1))
    # Background write-back of a0 starts at once (link busy until 1.009, window 0 s); b needs
    # 2 slots, evicts a1 by LRU, which must be written back first (done at 2.009).
    assert rig.stored(Tier.CPU) == [H(a)[0], H(a)[1]]
    assert rig.removed() == [H(a)[1]]
    assert r.load_wait_s == pytest.approx(2.0)
    assert rig.engine.stats().d2h_bytes == 8
    # a again without a plan: a0 still on the GPU, a1 comes back from the CPU (1 s); LRU
    # evicts b0 to make room.
    rig.plan = None
    r = rig.run_one("a2", a)
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks, r.computed_prompt_tokens) == (1, 1, 1)
    assert r.load_wait_s == pytest.approx(1.0)
    assert rig.removed() == [H(a)[1], H(toks(2, 1))[0]]
    s = rig.engine.stats()
    assert (s.h2d_bytes, s.cpu_hit_blocks) == (4, 1)
    assert s.stall_s == pytest.approx(3.0)


def test_prefetch_within_bandwidth_never_over_the_plans_other_prefetches() -> None:
    rig = Rig(gpu_blocks=4, cpu_blocks=8, transfer_window_s=0.0)
    x, y = toks(1, 3), toks(2, 3)
    rig.plan = CachePlan("sim0", 1, offload=tuple(H(x)))
    rig.run_one("x", x)
    rig.run_one("y", y)  # evicts x2 x1 x0, written back: x is on the CPU only
    assert set(rig.engine.cpu_cached()) == set(H(x))
    assert rig.engine.gpu_cached() == H(y)
    t = rig.engine.now_s
    # Prefetch x; the plan (stale: it still names x0 evict-first) puts x0 and y2 first. The
    # one free slot takes x0; the link (1 s per block) is then busy, so nothing more is
    # issued in this pass.
    rig.plan = CachePlan("sim0", 2, evict_first=(H(x)[0], H(y)[2]), prefetch=tuple(H(x)))
    rig.engine.run(until_s=t + 0.5)
    assert H(x)[0] in rig.engine.gpu_cached() and H(x)[1] not in rig.engine.gpu_cached()
    assert rig.engine.stats().prefetched_blocks == 1
    # Link free again: x1 needs a slot. x0 heads the eviction order, but a prefetch never
    # displaces another block of the same plan's prefetch: y2 goes (x1 lands 1 s later).
    rig.engine.run(until_s=t + 1.5)
    rig.engine.run(until_s=t + 2.5)
    assert rig.removed()[3:] == [H(y)[2]]
    assert rig.engine.stats().prefetched_blocks == 2
    # x2 next: the plan's other evict_first is gone, so the LRU of the rest (x0, x1 spared).
    rig.engine.run(until_s=t + 3.5)
    assert rig.removed()[3:] == [H(y)[2], H(y)[1]]
    assert set(rig.engine.gpu_cached()) == {H(y)[0], *H(x)}
    # x runs: all three prefetched blocks are GPU hits.
    rig.plan = None
    r = rig.run_one("x2", x)
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks, r.load_wait_s) == (3, 0, 0.0)
    s = rig.engine.stats()
    assert (s.prefetch_used_blocks, s.h2d_bytes) == (3, 12)
    rig.engine.check_integrity()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="gpu_blocks"):
        EngineConfig(gpu_blocks=0)
    with pytest.raises(ValueError, match="cpu_blocks"):
        EngineConfig(gpu_blocks=4, cpu_blocks=-1)
    rig = Rig(gpu_blocks=4)
    with pytest.raises(ValueError, match="'big' needs 5 GPU blocks"):
        rig.engine.submit(SimRequest("big", tuple(toks(1, 4)), 3))
    with pytest.raises(ValueError, match="empty prompt"):
        rig.engine.submit(SimRequest("e", (), 3))
    assert rig.engine.idle


def test_continuous_batching_shares_decode_steps() -> None:
    rig = Rig(gpu_blocks=64)
    for i in range(4):
        rig.engine.submit(SimRequest(f"r{i}", tuple(toks(i + 1, 1)), 10))
    finished = []
    while not rig.engine.idle:
        finished += rig.engine.run()
    # One batched prefill of 4 x 5 tokens (20 ms), then 9 shared decode steps (9 ms).
    assert sorted(r.request_id for r in finished) == ["r0", "r1", "r2", "r3"]
    assert [r.finish_s for r in finished] == [pytest.approx(0.029)] * 4
    assert rig.engine.stats().iterations == 1 + 9


def test_token_budget_defers_admission_so_a_burst_hits_the_first_prefill() -> None:
    rig = Rig(gpu_blocks=64, max_batch_tokens=16)
    shared = toks(1, 3, 0)  # 12 tokens, 3 blocks
    rig.engine.submit(SimRequest("a", tuple(shared + [1, 2, 3, 4]), 1))
    rig.engine.submit(SimRequest("b", tuple(shared + [5, 6, 7, 8]), 1))
    done = rig.engine.run()
    # Iteration 1: a takes the whole 16-token budget; b is not admitted (not looked up) yet.
    assert [r.request_id for r in done] == ["a"]
    done = rig.engine.run()
    # Iteration 2: b is admitted and hits a's 3 blocks: 4 tokens computed.
    assert [(r.request_id, r.gpu_hit_blocks, r.computed_prompt_tokens) for r in done] == [
        ("b", 3, 4)
    ]
    assert rig.engine.now_s == pytest.approx(0.016 + 0.004)


def test_ideal_cache_never_evicts_but_bounds_blocks_in_use() -> None:
    rig = Rig(gpu_blocks=5, ideal_cache=True)
    a, b, c = toks(1, 2), toks(2, 2), toks(3, 2)
    for rid, t in (("a", a), ("b", b), ("c", c)):
        rig.run_one(rid, t)
    # Six cached blocks in a 5-slot engine: unused cached blocks take no slot.
    assert len(rig.engine.gpu_cached()) == 6 and rig.removed() == []
    r = rig.run_one("a2", a)
    assert r.gpu_hit_blocks == 2
    # A request still cannot use more slots than there are.
    with pytest.raises(ValueError, match="needs 6 GPU blocks"):
        rig.engine.submit(SimRequest("big", tuple(toks(4, 5)), 1))


def test_serial_transfers_add_their_time_to_the_engine_busy_time() -> None:
    """``transfer_overlap=0`` (vLLM's CPU backend copies inside the step): the same run takes
    the copy time longer in busy time; with full overlap it does not."""
    from dataclasses import replace

    busy = {}
    for overlap in (1.0, 0.0):
        events: list = []
        plan = {"p": None}
        engine = SimEngine(
            EngineConfig(gpu_blocks=3, cpu_blocks=4, tokens_per_block=4, transfer_window_s=0.0),
            replace(COST, transfer_overlap=overlap),
            sink=events.append,
            plans=lambda _id, plan=plan: plan["p"],
        )
        a = toks(1, 2)
        engine.submit(SimRequest("a", tuple(a), 1, "w", "a"))
        engine.run()
        plan["p"] = CachePlan("sim0", 1, offload=tuple(H(a)))
        engine.submit(SimRequest("b", tuple(toks(2, 1)), 1, "w", "a"))
        engine.run()
        assert engine.stats().d2h_bytes == 8  # two blocks written back, 1 s each
        busy[overlap] = engine.stats().busy_s
    assert busy[0.0] == pytest.approx(busy[1.0] + 2.0)


def test_transfer_overlap_must_be_a_share() -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="transfer_overlap"):
        replace(COST, transfer_overlap=1.5)


@pytest.mark.parametrize("needs_parent", [False, True])
def test_prefetch_of_a_child_whose_parent_is_off_the_gpu(needs_parent: bool) -> None:
    rig = Rig(gpu_blocks=4, cpu_blocks=8, transfer_window_s=0.0, prefetch_needs_parent=needs_parent)
    x, y = toks(1, 3), toks(2, 3)
    rig.plan = CachePlan("sim0", 1, offload=tuple(H(x)))
    rig.run_one("x", x)
    rig.run_one("y", y)  # x is on the CPU only
    rig.plan = CachePlan("sim0", 2, prefetch=(H(x)[1],))  # the child alone, parent on the CPU
    rig.engine.run(until_s=rig.engine.now_s + 0.5)
    assert (H(x)[1] in rig.engine.gpu_cached()) is not needs_parent


def test_write_through_mode_copies_unranked_blocks_while_the_cpu_tier_has_room() -> None:
    """The vLLM adapter's host tier: computed blocks go to the CPU tier before eviction (ranked
    ones first, unranked ones only into free room), nothing is written back at eviction."""
    rig = Rig(gpu_blocks=3, cpu_blocks=2, transfer_window_s=0.0, write_through_per_iteration=8)
    a = toks(1, 2)
    rig.plan = CachePlan("sim0", 1)  # ranks nothing
    rig.run_one("a", a)
    rig.run_one("b", toks(2, 1))  # the next iterations copy a0, a1 (the tier is then full)
    assert set(rig.engine.cpu_cached()) == set(H(a))
    rig.run_one("c", toks(3, 2))  # evicts; unranked c blocks never displace a0, a1
    assert set(rig.engine.cpu_cached()) == set(H(a))
    assert rig.engine.stats().offloaded_blocks == 2


def test_a_lookup_touches_the_cpu_copies_of_gpu_hits_too() -> None:
    """vLLM's connector touches every block of a prompt on lookup: a block hot on the GPU
    does not age on the CPU tier (its head ends most recent)."""
    rig = Rig(gpu_blocks=8, cpu_blocks=4, transfer_window_s=10.0)
    a, x = toks(1, 2), toks(2, 1)
    rig.run_one("a", a)
    rig.plan = CachePlan("sim0", 1, offload=tuple(H(a)))
    rig.run_one("x", x)  # background writes a0, a1
    rig.plan = CachePlan("sim0", 2, offload=tuple(H(x)))
    rig.run_one("y", toks(3, 1))  # background writes x0
    assert rig.engine.cpu_cached() == [H(a)[0], H(a)[1], H(x)[0]]
    rig.plan = None
    r = rig.run_one("a2", a)
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks) == (2, 0)
    assert rig.engine.cpu_cached() == [H(x)[0], H(a)[1], H(a)[0]]


def _a0_on_cpu_only(rig: Rig, a: list[int], offload: tuple[bytes, ...]) -> None:
    """a0 written to the CPU and evicted from the GPU; a1 stays on the GPU."""
    rig.run_one("a", a)
    rig.plan = CachePlan("sim0", 1, evict_first=(H(a)[0],), offload=offload)
    rig.run_one("b", toks(2, 1))  # needs 2 slots of the 1 free: evicts a0 first
    assert H(a)[0] not in rig.engine.gpu_cached() and H(a)[1] in rig.engine.gpu_cached()
    rig.plan = None


def test_a_gpu_block_after_the_first_miss_is_a_miss_unless_the_cpu_tier_holds_it() -> None:
    rig = Rig(gpu_blocks=3, cpu_blocks=4, transfer_window_s=10.0)
    a = toks(1, 2)
    _a0_on_cpu_only(rig, a, offload=(H(a)[0],))
    assert rig.engine.cpu_cached() == [H(a)[0]]
    r = rig.run_one("a2", a)
    # a0 is loaded from the CPU; a1, on the GPU past the gap but not on the CPU, is computed
    # (it used to count as a CPU hit without any load).
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks, r.computed_prompt_tokens) == (0, 1, 5)
    assert rig.engine.stats().h2d_bytes == 4


def test_a_gpu_block_after_the_first_miss_held_by_the_cpu_tier_is_loaded() -> None:
    rig = Rig(gpu_blocks=3, cpu_blocks=4, transfer_window_s=10.0)
    a = toks(1, 2)
    _a0_on_cpu_only(rig, a, offload=tuple(H(a)))
    assert rig.engine.cpu_cached() == H(a)
    h2d_before = rig.engine.stats().h2d_bytes
    r = rig.run_one("a2", a)
    # Both are CPU hits and both cross the link (1 s each, queued): a0 into a free slot,
    # a1's copy over the GPU block the prefix lookup could not reach.
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks, r.computed_prompt_tokens) == (0, 2, 1)
    assert rig.engine.stats().h2d_bytes - h2d_before == 8
    assert r.load_wait_s == pytest.approx(2.0)


def test_plan_delay_shows_each_step_the_plan_pulled_that_long_ago() -> None:
    current: dict = {"p": None}
    engine = SimEngine(
        EngineConfig(gpu_blocks=4, tokens_per_block=4, plan_delay_s=1.0),
        COST,
        plans=lambda _id: current["p"],
    )
    sched = engine.scheduler
    p1, p2 = CachePlan("sim0", 1), CachePlan("sim0", 2)
    seen = []
    for t, plan in ((0.0, p1), (0.5, p1), (1.0, p1), (1.2, p2), (2.1, p2), (2.2, p2)):
        current["p"], sched.now_s = plan, t
        view = sched._pull_plan()
        seen.append(None if view is None else view.plan.seq)
    assert seen == [None, None, 1, 1, 1, 2]


def test_charge_planner_adds_the_planners_cpu_time_to_the_clock() -> None:
    import time

    def slow_plans(_id: str) -> None:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.02:
            pass

    for charge in (False, True):
        engine = SimEngine(
            EngineConfig(gpu_blocks=4, tokens_per_block=4, charge_planner=charge),
            COST,
            plans=slow_plans,
        )
        engine.submit(SimRequest("a", tuple(toks(1, 1)), 1))
        engine.run()
        s = engine.stats()
        if charge:
            assert s.planner_s >= 0.02 * s.iterations
            assert s.now_s == pytest.approx(s.busy_s + s.planner_s)
        else:
            assert s.planner_s == 0.0 and s.now_s == pytest.approx(s.busy_s)


def test_a_serial_copy_is_paid_once_by_the_request_that_waits_for_it() -> None:
    """Alone on the engine, a request pays a copy once: as a wait for the link with full
    overlap, as step time without (it used to wait for the landing and pay the step too)."""
    from dataclasses import replace

    ends = {}
    for overlap in (1.0, 0.0):
        plan: dict = {"p": None}
        engine = SimEngine(
            EngineConfig(gpu_blocks=3, cpu_blocks=4, tokens_per_block=4, transfer_window_s=0.0),
            replace(COST, transfer_overlap=overlap),
            plans=lambda _id, plan=plan: plan["p"],
        )
        a = toks(1, 2)
        for rid, t, p in (
            ("a", a, None),
            ("b", toks(2, 1), CachePlan("sim0", 1, offload=tuple(H(a)))),
            ("a2", a, None),
        ):
            plan["p"] = p
            engine.submit(SimRequest(rid, tuple(t), 1, "w", "a"))
            (r,) = engine.run()
        assert (r.gpu_hit_blocks, r.cpu_hit_blocks) == (1, 1)
        s = engine.stats()
        ends[overlap] = (s.now_s, s.h2d_bytes + s.d2h_bytes)
    assert ends[0.0][0] == pytest.approx(ends[1.0][0]) and ends[0.0][1] == ends[1.0][1] == 12
