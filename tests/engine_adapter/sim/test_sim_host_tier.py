"""The simulator's host tier and host link alone, step by step with exact orders and times.

Cost model as in test_engine.py: 4-token blocks of 4 bytes and a link of 4 bytes/s each way,
so one block takes exactly 1 s to move.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sim_support import COST

from pbkv.cache_manager.events import BlockRemoved, BlockStored, CachePlan, Tier
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.gpu_pool import GpuBlockPool
from pbkv.engine_adapter.sim.host_tier import HostTier
from pbkv.engine_adapter.sim.plan_view import PlanView


class Tiers:
    """A pool of ``gpu`` slots and a host tier of ``cpu`` blocks sharing one event log."""

    def __init__(self, gpu: int, cpu: int, cost: CostModel = COST, **kw) -> None:
        self.events: list = []
        self.pool = GpuBlockPool(gpu, tokens_per_block=4, engine_id="sim0", emit=self.events.append)
        self.host = HostTier(
            cpu,
            self.pool,
            cost,
            tokens_per_block=4,
            engine_id="sim0",
            emit=self.events.append,
            **kw,
        )

    def cache(self, *names: str) -> None:
        """Computed blocks n0 <- n1 <- ... cached on the GPU with no user."""
        hashes = b(*names)
        self.pool.reserve(len(hashes))
        self.pool.cache_computed(hashes, 0, len(hashes), now_s=0.0)
        self.pool.release(hashes, 0)
        self.events.clear()

    def check(self) -> None:
        self.pool.check_integrity()
        self.host.check_integrity()


def b(*names: str) -> list[bytes]:
    return [n.encode() for n in names]


def cpu_stored(t: Tiers) -> list[bytes]:
    return [
        h
        for e in t.events
        if isinstance(e, BlockStored) and e.tier is Tier.CPU
        for h in e.block_hashes
    ]


def test_write_backs_queue_on_the_link_and_the_full_tier_drops_its_lru_block() -> None:
    t = Tiers(gpu=8, cpu=2)
    assert t.host.write_back(b"a", None, now_s=0.0) == 1.0
    assert t.host.write_back(b"b", b"a", now_s=0.5) == 2.0  # waits for the link
    assert t.host.write_back(b"c", b"b", now_s=5.0) == 6.0  # full: a (oldest) is dropped
    assert t.events == [
        BlockStored("sim0", (b"a",), None, 4, Tier.CPU),
        BlockStored("sim0", (b"b",), b"a", 4, Tier.CPU),
        BlockRemoved("sim0", (b"a",), Tier.CPU),
        BlockStored("sim0", (b"c",), b"b", 4, Tier.CPU),
    ]
    assert t.host.cached() == b("b", "c")
    assert (
        t.host.counts["d2h_bytes"],
        t.host.counts["offloaded_blocks"],
        t.host.counts["cpu_evictions"],
    ) == (12, 3, 1)
    assert t.host.take_serial() == 0.0  # full overlap: no copy time charged to the engine
    t.check()


def test_protected_blocks_are_never_dropped_and_an_all_protected_tier_drops_the_copy() -> None:
    # The dropped copy is counted (dropped_writebacks).
    t = Tiers(gpu=8, cpu=2)
    t.host.write_back(b"a", None, now_s=0.0)
    t.host.write_back(b"b", None, now_s=0.0)
    with t.host.protecting({b"a"}):
        t.host.write_back(b"c", None, now_s=0.0)  # a is spared: b goes
    assert t.host.cached() == b("a", "c")
    with t.host.protecting({b"a", b"c"}):
        assert t.host.write_back(b"d", None, now_s=7.0) == 7.0  # nothing written
    assert t.host.cached() == b("a", "c") and t.host.counts["offloaded_blocks"] == 3
    assert t.host.counts["dropped_writebacks"] == 1
    t.check()  # nothing left protected


def test_no_tier_writes_nothing() -> None:
    t = Tiers(gpu=8, cpu=0)
    assert t.host.write_back(b"a", None, now_s=3.0) == 3.0
    assert t.events == [] and t.host.cached() == []


def test_a_load_lands_later_a_prefetch_refreshes_recency_and_serial_copies_are_charged() -> None:
    t = Tiers(gpu=8, cpu=4, cost=replace(COST, transfer_overlap=0.0))
    for h in b("a", "b", "c"):
        t.host.write_back(h, None, now_s=0.0)
    assert t.host.take_serial() == pytest.approx(3.0)
    assert t.host.take_serial() == 0.0
    t.events.clear()
    # No overlap: the engine copies inside its next step (take_serial), so a load is
    # usable at once (its 1 s is paid once, in the step) and nothing queues on the link.
    assert t.host.load(b"a", None, ref=1, now_s=0.5) == 0.5
    assert t.host.load(b"b", b"a", ref=0, now_s=0.5, prefetched=True) == 0.5
    # A lookup's load was touched already (vLLM); a prefetch makes its block most recent.
    assert t.host.cached() == b("a", "c", "b")
    assert t.events == [
        BlockStored("sim0", (b"a",), None, 4, Tier.GPU),
        BlockStored("sim0", (b"b",), b"a", 4, Tier.GPU),
    ]
    assert (t.pool.get(b"a").ref_cnt, t.pool.get(b"a").ready_s) == (1, 0.5)
    assert t.host.h2d_free_s == 0.5
    assert t.pool.evictable() == [b"b"] and t.pool.get(b"b").prefetched
    assert t.host.counts["h2d_bytes"] == 8
    assert t.host.take_serial() == pytest.approx(2.0)
    t.pool.check_integrity({b"a": 1}, 0)


def test_eviction_writes_back_the_plans_offload_blocks_first() -> None:
    t = Tiers(gpu=3, cpu=4)
    t.cache("a", "b", "c")
    v = PlanView(CachePlan("sim0", 1, offload=(b"c", b"a")))
    # 2 slots: LRU victims c then b; c is in offload, b is not.
    assert t.host.make_room(2, v, now_s=10.0) == 11.0
    assert t.events == [
        BlockStored("sim0", (b"c",), b"b", 4, Tier.CPU),
        BlockRemoved("sim0", (b"c", b"b"), Tier.GPU),
    ]
    # No plan: nothing written back; a block the tier holds is not written again.
    t.cache("d")
    t.events.clear()
    assert t.host.evict(b("a"), None, now_s=20.0) == 20.0
    assert t.host.evict(b("d"), PlanView(CachePlan("sim0", 2, offload=(b"d",))), now_s=20.0) == 21.0
    assert cpu_stored(t) == [b"d"]
    t.check()


def test_write_through_mode_never_writes_back_at_eviction() -> None:
    t = Tiers(gpu=3, cpu=4, write_through_per_iteration=2)
    t.cache("a")
    t.host.evict(b("a"), PlanView(CachePlan("sim0", 1, offload=(b"a",))), now_s=0.0)
    assert t.host.cached() == [] and t.events == [BlockRemoved("sim0", (b"a",), Tier.GPU)]


def test_background_offload_books_the_link_within_the_window_only() -> None:
    t = Tiers(gpu=8, cpu=8, transfer_window_s=1.5)
    t.cache("a", "b", "c", "d")
    v = PlanView(CachePlan("sim0", 1, offload=(b"d", b"x", b"b", b"a", b"c")))
    t.host.background(v, now_s=0.0)
    # d (link free at 1), x (not on the GPU: skipped), b (link free at 2 > 1.5: stop).
    assert cpu_stored(t) == b("d", "b")
    assert v.offload_cursor == 3 and t.host.link_free_times(v) == [2.0]
    t.host.background(v, now_s=1.0)  # resumes at a: a, then stops (link free at 3 > 2.5)
    assert cpu_stored(t) == b("d", "b", "a")
    t.host.background(v, now_s=5.0)
    assert cpu_stored(t) == b("d", "b", "a", "c") and not v.offload_pending
    assert t.host.link_free_times(v) == []
    t.host.background(None, now_s=9.0)  # no plan: no background work at all
    assert t.host.counts["offloaded_blocks"] == 4


def test_background_offload_waits_for_a_block_still_landing() -> None:
    t = Tiers(gpu=8, cpu=1, transfer_window_s=10.0)
    t.host.write_back(b"a", None, now_s=0.0)
    t.host.load(b"a", None, ref=0, now_s=0.0)  # lands at 1
    t.host.write_back(b"z", None, now_s=0.0)  # the one-block tier drops a for z
    t.cache("b")
    assert t.host.cached() == [b"z"] and t.pool.get(b"a").ready_s == 1.0
    v = PlanView(CachePlan("sim0", 1, offload=(b"a", b"b")))
    t.host.background(v, now_s=0.5)
    assert v.offload_cursor == 0  # a still landing: the pass ends, b waits too
    t.host.background(v, now_s=1.0)
    assert v.offload_cursor == 2 and cpu_stored(t)[-2:] == b("a", "b")
    assert t.host.cached() == [b"b"]


def test_background_prefetch_fills_free_slots_then_displaces_prefetch_victims() -> None:
    t = Tiers(gpu=3, cpu=8, transfer_window_s=0.0)
    for h in b("p", "q", "r"):
        t.host.write_back(h, None, now_s=0.0)
    t.cache("x", "y")  # 1 slot free; LRU order y, x
    v = PlanView(CachePlan("sim0", 1, evict_first=(b"p",), prefetch=(b"p", b"q", b"r")))
    t.host.background(v, now_s=3.0)  # p into the free slot; link then busy until 4
    assert t.pool.cached() == b("x", "y", "p") and v.prefetch_cursor == 1
    t.host.background(v, now_s=4.0)  # q: p heads evict_first but is spared; y goes (LRU)
    assert t.pool.cached() == b("x", "p", "q")
    t.host.background(v, now_s=5.0)
    assert t.pool.cached() == b("p", "q", "r")
    removed = [e.block_hashes for e in t.events if isinstance(e, BlockRemoved)]
    assert removed == [(b"y",), (b"x",)]
    assert t.host.counts["prefetched_blocks"] == 3
    # Nothing left to displace but the plan's own prefetch blocks: the pass stops.
    t.host.write_back(b"s", None, now_s=5.0)
    v2 = PlanView(CachePlan("sim0", 2, prefetch=(b"p", b"q", b"r", b"s")))
    t.host.background(v2, now_s=9.0)
    assert v2.prefetch_cursor == 3 and b"s" not in t.pool
    t.check()


@pytest.mark.parametrize("needs_parent", [False, True])
def test_prefetch_needs_parent_skips_a_block_whose_parent_is_off_the_gpu(needs_parent) -> None:
    t = Tiers(gpu=4, cpu=4, transfer_window_s=0.0, prefetch_needs_parent=needs_parent)
    t.host.write_back(b"c0", None, now_s=0.0)
    t.host.write_back(b"c1", b"c0", now_s=0.0)
    v = PlanView(CachePlan("sim0", 1, prefetch=(b"c1",)))
    t.host.background(v, now_s=2.0)
    assert (b"c1" in t.pool) is not needs_parent
    assert v.prefetch_cursor == 1  # skipped for good, not retried


def test_write_through_pass_ranked_first_then_unranked_into_free_room() -> None:
    t = Tiers(gpu=8, cpu=3, transfer_window_s=0.0, write_through_per_iteration=2)
    t.cache("a", "b", "c", "d")
    v = PlanView(CachePlan("sim0", 1, evict_first=(b"d",), offload=(b"a",)))
    t.host.background(v, now_s=0.0)
    # Budget 2: a (ranked), then unranked newest first, skipping evict_first d: c.
    assert cpu_stored(t) == b("a", "c")
    t.host.background(v, now_s=0.0)  # a, c already there; b fills the last room
    assert cpu_stored(t) == b("a", "c", "b")
    t.host.background(v, now_s=0.0)  # the tier is full: unranked blocks never displace
    assert cpu_stored(t) == b("a", "c", "b") and t.host.counts["cpu_evictions"] == 0
    # A ranked block does displace the tier's LRU block.
    t.cache("e")
    t.host.background(PlanView(CachePlan("sim0", 2, offload=(b"e",))), now_s=0.0)
    assert t.host.cached() == b("c", "b", "e")
    t.check()


def test_touch_refreshes_held_blocks_last_first_so_the_prompt_head_ends_most_recent() -> None:
    t = Tiers(gpu=8, cpu=4)
    for h in b("a", "b", "c", "d"):
        t.host.write_back(h, None, now_s=0.0)
    t.host.touch(b("b", "x", "c"))  # x is not held: ignored
    assert t.host.cached() == b("a", "d", "c", "b")
    t.host.write_back(b"e", None, now_s=9.0)  # full: the LRU block a goes, then d
    t.host.write_back(b"f", None, now_s=9.0)
    assert t.host.cached() == b("c", "b", "e", "f")
    assert t.host.counts["cpu_evictions"] == 2


def test_copy_in_books_the_h2d_link_without_a_new_block() -> None:
    t = Tiers(gpu=8, cpu=4, cost=replace(COST, transfer_overlap=0.5))
    # Half the copy is the engine's own (charged to the next step), half the link's.
    assert t.host.copy_in(now_s=2.0) == 2.5
    assert t.host.copy_in(now_s=2.0) == 3.0  # queued behind the first
    assert t.pool.cached() == [] and t.host.counts["h2d_bytes"] == 8
    assert t.host.take_serial() == pytest.approx(1.0)


def test_a_full_tier_drops_the_plans_host_drop_first_blocks_before_its_lru_block() -> None:
    t = Tiers(gpu=8, cpu=3)
    for i, h in enumerate(b("a", "b", "c")):
        t.host.write_back(h, None, now_s=float(i))
    # The plan values b least, then a; c is not named (LRU after the named ones).
    t.host.view = PlanView(CachePlan("sim0", 1, host_drop_first=(b"x", b"b", b"a")))
    t.events.clear()
    t.host.write_back(b"d", None, now_s=10.0)
    t.host.write_back(b"e", None, now_s=11.0)
    t.host.write_back(b"f", None, now_s=12.0)
    dropped = [e.block_hashes[0] for e in t.events if isinstance(e, BlockRemoved)]
    assert dropped == b("b", "a", "c")  # x was never on the tier: skipped
    assert t.host.view.host_cursor == 3  # x, b, a have left: not looked at again
    assert t.host.cached() == b("d", "e", "f")
    # No plan: plain LRU again.
    t.host.view = None
    t.events.clear()
    t.host.write_back(b"g", None, now_s=20.0)
    assert [e.block_hashes[0] for e in t.events if isinstance(e, BlockRemoved)] == b("d")
    t.check()
