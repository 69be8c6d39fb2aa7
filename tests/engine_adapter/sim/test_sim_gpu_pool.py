"""The simulator's GPU block pool alone, step by step with exact orders (hashes are short
names; 4 tokens per block)."""

from __future__ import annotations

import pytest

from pbkv.cache_manager.events import BlockRemoved, BlockStored, CachePlan, Tier
from pbkv.engine_adapter.sim.gpu_pool import GpuBlockPool
from pbkv.engine_adapter.sim.plan_view import PlanView


def pool(capacity: int = 8, ideal: bool = False) -> tuple[GpuBlockPool, list]:
    events: list = []
    return GpuBlockPool(
        capacity, tokens_per_block=4, engine_id="sim0", emit=events.append, ideal=ideal
    ), events


def b(*names: str) -> list[bytes]:
    return [n.encode() for n in names]


def cache_unused(p: GpuBlockPool, *names: str) -> None:
    """Computed blocks a <- b <- ... cached by one request that has finished."""
    hashes = b(*names)
    p.reserve(len(hashes))
    p.cache_computed(hashes, 0, len(hashes), now_s=0.0)
    p.release(hashes, 0)


def view(**lists: tuple[bytes, ...]) -> PlanView:
    return PlanView(CachePlan("sim0", 1, **lists))


def test_computed_blocks_become_cached_in_runs_and_are_freed_tail_first() -> None:
    p, events = pool(8)
    p.reserve(4)  # a request's 4 uncached slots
    assert p.free_slots() == 4
    # x1 was cached meanwhile by someone else: x0 and x2 are stored as two runs.
    p.add_loaded(b"x1", b"x0", ref=1, ready_s=0.0)
    events.clear()
    stored = p.cache_computed(b("x0", "x1", "x2", "x3"), 0, 3, now_s=2.0)
    assert stored == b("x0", "x2")
    assert events == [
        BlockStored("sim0", (b"x0",), None, 4, Tier.GPU),
        BlockStored("sim0", (b"x2",), b"x1", 4, Tier.GPU),
    ]
    # 3 cached blocks, 2 of the 4 reserved slots still uncached.
    assert p.free_slots() == 8 - 3 - 2
    assert p.cached() == b("x1", "x0", "x2") and p.evictable() == []
    assert p.get(b"x2").ready_s == 2.0 and p.get(b"x2").parent == b"x1"
    # The request held x0 x2 (plus x1 from the load); released last first.
    p.release(b("x0", "x1", "x2"), 2)
    assert p.evictable() == b("x2", "x1", "x0")
    assert p.free_slots() == 5
    p.check_integrity({}, 0)


def test_pin_takes_a_block_off_the_free_lru_and_release_puts_it_last() -> None:
    p, _ = pool(8)
    cache_unused(p, "a", "b", "c")
    assert p.evictable() == b("c", "b", "a")
    assert p.pin(b"b") == 0.0
    assert p.evictable() == b("c", "a")
    p.check_integrity({b"b": 1}, 0)
    with pytest.raises(AssertionError):
        p.check_integrity({}, 0)  # the holders' view disagrees: b has a user
    p.release([b"b"], 0)
    assert p.evictable() == b("c", "a", "b")


def test_victims_lru_plan_order_and_prefetch_order() -> None:
    p, _ = pool(8)
    p.reserve(5)
    p.cache_computed(b("a", "b", "c", "d", "e"), 0, 5, now_s=0.0)
    p.release(b("a", "b", "c", "d"), 0)  # e stays in use
    assert p.evictable() == b("d", "c", "b", "a")
    assert p.victims(2, None) == b("d", "c")
    assert p.victims(0, None) == []
    assert p.victims(1, None, for_prefetch=True) == []  # no plan: a prefetch takes nothing
    # evict_first in plan order (skipping the block in use and one the pool lacks), then
    # the unnamed blocks by LRU.
    v = view(evict_first=(b"b", b"e", b"zz", b"a"), prefetch=(b"d",))
    assert p.victims(9, v) == b("b", "a", "d", "c")
    # A prefetch never displaces one of the plan's prefetch blocks.
    assert p.victims(9, v, for_prefetch=True) == b("b", "a", "c")
    assert p.victims(1, v, for_prefetch=True) == b("b")


def test_evict_spills_each_victim_first_then_reports_them_together() -> None:
    p, events = pool(8)
    cache_unused(p, "a", "b", "c")
    events.clear()
    spilled: list = []
    p.evict(b("c", "a"), lambda h, parent: spilled.append((h, parent, h in p)))
    assert spilled == [(b"c", b"b", True), (b"a", None, True)]  # still cached when spilled
    assert events == [BlockRemoved("sim0", (b"c", b"a"), Tier.GPU)]
    assert p.cached() == [b"b"] and p.evictable() == [b"b"]
    assert p.counts["gpu_evictions"] == 2
    p.evict([], lambda h, parent: None)
    assert len(events) == 1  # nothing evicted, nothing reported
    p.check_integrity({}, 0)


def test_can_allocate_counts_evictable_blocks_but_not_the_hits_it_pins() -> None:
    p, _ = pool(6)
    cache_unused(p, "a", "b", "c")
    p.reserve(1)  # someone else's uncached slot: 2 free, 3 evictable
    assert p.free_slots() == 2
    assert p.can_allocate(5, []) and not p.can_allocate(6, [])
    # Pinning a and b (hits) leaves 1 evictable block: 3 slots at most.
    assert p.can_allocate(3, b("a", "b")) and not p.can_allocate(4, b("a", "b"))


def test_ideal_pool_gives_unused_cached_blocks_no_slot() -> None:
    p, _ = pool(4, ideal=True)
    p.reserve(3)
    p.cache_computed(b("a", "b", "c"), 0, 3, now_s=0.0)
    assert p.free_slots() == 1
    p.release(b("a", "b", "c"), 0)
    assert p.free_slots() == 4
    # A hit pinned takes its slot back: 3 more slots fit beside it, 4 do not.
    assert p.can_allocate(3, [b"a"]) and not p.can_allocate(4, [b"a"])


def test_a_prefetched_block_counts_as_used_once() -> None:
    p, events = pool(4)
    p.add_loaded(b"a", None, ref=0, ready_s=3.0, prefetched=True)
    assert events == [BlockStored("sim0", (b"a",), None, 4, Tier.GPU)]
    assert p.evictable() == [b"a"]
    assert p.pin(b"a") == 3.0  # lands at 3 s
    p.note_hits([b"a"])
    p.note_hits([b"a"])
    assert p.counts["prefetch_used_blocks"] == 1
    assert p.get(b"a").prefetched is False
