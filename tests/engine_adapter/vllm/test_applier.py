"""``PlanApplier`` against a real vLLM ``BlockPool`` (no engine): when it takes a plan, the free
queue it leaves, and the host-tier copies it orders, step by step with exact block ids."""

from __future__ import annotations

from types import SimpleNamespace

from pbkv.cache_manager.events import BlockRemoved, BlockStored, CachePlan, Tier
from pbkv.engine_adapter.vllm.applier import PlanApplier
from pbkv.engine_adapter.vllm.plan_order import cached_block, free_queue_ids
from pbkv.engine_adapter.vllm.reporter import BlockReporter
from pbkv.engine_adapter.vllm.stats import ConnectorStats

H = [bytes([i]) * 32 for i in range(8)]


class PlanSource:
    """The link's ``latest_plan``, counting its calls."""

    def __init__(self) -> None:
        self.plan: CachePlan | None = None
        self.calls = 0

    def __call__(self) -> CachePlan | None:
        self.calls += 1
        return self.plan


def make_applier(pool, **kwargs):
    events: list = []
    stats = ConnectorStats()
    reporter = BlockReporter("e", block_size=4, step_blocks=1, send=events.append, stats=stats)
    source = PlanSource()
    applier = PlanApplier(reporter, source, stats, step_blocks=1, **kwargs)
    reporter.pool = applier.pool = pool
    return applier, source, events


def cpu_stored(h, parent):
    return BlockStored("e", (h,), parent, 4, Tier.CPU)


def test_a_plan_is_taken_once_a_step_and_reapplied_only_when_the_queue_tail_moves(make_pool):
    pool = make_pool(6, H[:5])  # blocks 1..5 cache H0..H4, LRU order; nothing never-used
    applier, source, _ = make_applier(pool)
    source.plan = CachePlan("e", 1, evict_first=(H[3], H[1]))
    applier.refresh_plan()
    assert free_queue_ids(pool) == [4, 2, 1, 3, 5]
    source.plan = CachePlan("e", 2, evict_first=(H[4],))  # arrives mid-step: not taken yet
    applier.refresh_plan()
    assert (source.calls, applier.stats.plans_applied, applier.plan.seq) == (1, 1, 1)
    block = cached_block(pool, H[0])
    pool.touch([block])  # a hit takes block 1 out of the middle: the order still holds
    applier.refresh_plan()
    assert applier.stats.plans_applied == 1
    pool.free_blocks([block])  # freed to the tail: the plan is applied again
    applier.refresh_plan()
    assert applier.stats.plans_applied == 2 and free_queue_ids(pool) == [4, 2, 3, 5, 1]
    applier.end_step({})
    applier.refresh_plan()  # the next step takes the newer plan
    assert source.calls == 2 and free_queue_ids(pool) == [5, 4, 2, 3, 1]


def test_no_plan_is_taken_while_never_used_blocks_cover_the_margin(make_pool):
    pool = make_pool(12, H[:2])  # never-used 3..11 head the queue, then H0, H1
    applier, source, _ = make_applier(pool)
    source.plan = CachePlan("e", 1, evict_first=(H[1],))
    assert applier.plan_margin_blocks == 4  # four steps of one block
    applier.refresh_plan()
    assert (source.calls, applier.plan, applier.stats.steps_without_pressure) == (0, None, 1)
    assert free_queue_ids(pool)[-2:] == [1, 2]  # vLLM's LRU, untouched
    with_host, source, _ = make_applier(pool, host_tier_blocks=2)
    source.plan = CachePlan("e", 1, evict_first=(H[1],))
    assert with_host.plan_margin_blocks == 16  # write-through must start early
    with_host.refresh_plan()
    assert source.calls == 1 and free_queue_ids(pool)[-2:] == [2, 1]
    assert make_applier(pool, plan_margin_blocks=9)[0].plan_margin_blocks == 9


def test_host_hits_after_the_gpu_hit_load_into_the_allocated_blocks(make_pool, request_of):
    pool = make_pool(8, [])
    applier, _, _ = make_applier(pool, host_tier_blocks=4)
    for h in (H[1], H[2]):
        applier.host.admit(h)
    request = request_of("r", H[:4])
    assert applier.host_hit_tokens(request, num_computed_tokens=4) == 8  # H1, H2 after H0
    allocated = SimpleNamespace(get_block_ids=lambda: ([7, 8, 9, 10],))
    assert applier.load_host_hits(request, allocated, num_external_tokens=8) == 2
    # A prompt of exactly two blocks: its last token is computed, so only H1 is offered.
    exact = request_of("x", H[1:3], num_tokens=8)
    assert applier.host_hit_tokens(exact, num_computed_tokens=0) == 4
    applier.forget("x")
    assert applier.load_host_hits(exact, allocated, num_external_tokens=4) == 0
    ops = applier.end_step({})
    assert (ops.loads, ops.saves, ops.drops) == ([(H[1], 8), (H[2], 9)], [], [])
    assert (applier.stats.host_hit_blocks, applier.host.num_loaded) == (2, 2)
    assert not applier.end_step({})  # each step's orders are handed out once


def test_saves_follow_the_write_through_order_and_the_host_drop_order(
    make_pool, cache_blocks, request_of
):
    pool = make_pool(8, [])
    applier, source, events = make_applier(pool, host_tier_blocks=3, max_saves_per_step=2)
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:4]), num_cpu_hit_blocks=0)
    blocks = cache_blocks(pool, H[:4])  # blocks 1..4
    reporter.report_block_changes()
    events.clear()
    source.plan = CachePlan("e", 1, evict_first=(H[0],), offload=(H[1],))
    # H3 was computed in this step (not stable): the plan's H1, then unranked H2; H0 never.
    stable = reporter.stable_blocks()
    ops = applier.end_step({h: stable[h] for h in H[:3]})
    assert ops.saves == [(H[1], 2), (H[2], 3)] and applier.host.hashes() == [H[1], H[2]]
    assert events == [cpu_stored(H[1], H[0]), cpu_stored(H[2], H[1])]
    ops = applier.end_step(reporter.stable_blocks())  # one slot left: the newest unranked, H3
    assert ops.saves == [(H[3], 4)] and len(applier.host) == 3
    events.clear()
    source.plan = CachePlan("e", 2, evict_first=(H[2],), offload=(H[0],), host_drop_first=(H[2],))
    ops = applier.end_step(reporter.stable_blocks())  # full: H0 takes the slot of listed H2
    assert (ops.saves, ops.drops) == ([(H[0], 1)], [H[2]])
    # The drop is reported first: a full tier has no room for the store before it.
    assert events == [BlockRemoved("e", (H[2],), Tier.CPU), cpu_stored(H[0], None)]
    assert blocks[0].block_id == 1
    source.plan = CachePlan("e", 3, offload=(H[2],))
    ops = applier.end_step(reporter.stable_blocks())  # nothing listed: LRU drops H1
    assert (ops.saves, ops.drops) == ([(H[2], 3)], [H[1]])


def test_exclusive_margin_drops_copies_of_gpu_blocks_far_from_eviction_first(
    make_pool, cache_blocks, request_of
):
    pool = make_pool(8, [])
    applier, source, _ = make_applier(
        pool, host_tier_blocks=3, max_saves_per_step=2, exclusive_margin_blocks=2
    )
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:5]), num_cpu_hit_blocks=0)
    blocks = cache_blocks(pool, H[:5])  # blocks 1..5
    reporter.report_block_changes()
    pool.free_blocks(blocks[:4])  # H4 stays in use
    assert free_queue_ids(pool) == [6, 7, 1, 2, 3, 4]  # H0, H1: the next cached to go
    for h in (H[4], H[0], H[2]):  # oldest first
        applier.host.admit(h)
    source.plan = CachePlan("e", 1, offload=(H[1], H[3]))
    ops = applier.end_step(reporter.stable_blocks())
    # Spare: H4 (in use) and H2 (beyond the margin), oldest first; H0 (at risk) is kept
    # though it is the oldest.
    assert (ops.saves, ops.drops) == ([(H[1], 2), (H[3], 4)], [H[4], H[2]])
    assert applier.host.hashes() == [H[0], H[1], H[3]]


def test_prefetch_brings_host_blocks_back_parents_first_into_the_queue_head(
    make_pool, cache_blocks, request_of
):
    pool = make_pool(6, [])  # 5 usable blocks
    applier, source, events = make_applier(pool, host_tier_blocks=4)
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    pool.free_blocks(cache_blocks(pool, H[:2]))  # blocks 1, 2
    reporter.report_block_changes()
    source.plan = CachePlan("e", 1, offload=(H[0], H[1]))
    assert applier.end_step(reporter.stable_blocks()).saves == [(H[0], 1), (H[1], 2)]
    pool.free_blocks(pool.get_new_blocks(5))  # evicts H0, H1 from the GPU
    reporter.report_block_changes()
    assert cached_block(pool, H[0]) is None and free_queue_ids(pool) == [3, 4, 5, 1, 2]
    events.clear()
    source.plan = CachePlan("e", 2, prefetch=(H[1], H[0]))
    ops = applier.end_step({})
    assert ops.loads == [(H[0], 3), (H[1], 4)]  # parents first, from the head
    assert [cached_block(pool, h).block_id for h in H[:2]] == [3, 4]
    assert free_queue_ids(pool) == [5, 1, 2, 3, 4]  # cached and free: LRU tail
    assert events == [
        BlockStored("e", (H[0],), None, 4, Tier.GPU),
        BlockStored("e", (H[1],), H[0], 4, Tier.GPU),
    ]
    assert (applier.stats.prefetched_blocks, applier.stats.prefetch_wanted) == (2, 2)


def test_prefetch_skips_orphans_and_stops_at_a_block_another_prefetch_needs(
    make_pool, cache_blocks, request_of
):
    pool = make_pool(6, [])
    applier, source, _ = make_applier(pool, host_tier_blocks=4)
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:3]), num_cpu_hit_blocks=0)
    pool.free_blocks(cache_blocks(pool, H[:3]))  # blocks 1..3
    reporter.report_block_changes()
    source.plan = CachePlan("e", 1, offload=(H[1], H[2]))
    applier.end_step(reporter.stable_blocks())  # H1, H2 saved
    pool.evict_blocks({2, 3})  # H1, H2 leave the GPU; H0 stays (block 1)
    reporter.report_block_changes()
    pool.free_blocks(pool.get_new_blocks(2))  # never-used 4, 5 back at the head, LIFO
    stats = applier.stats
    source.plan = CachePlan("e", 2, prefetch=(H[2],))  # its parent H1 is not on the GPU
    assert applier.end_step({}).loads == [] and stats.prefetch_no_parent == 1
    pool.touch([pool.blocks[i] for i in (2, 3, 4, 5)])  # in use: H0's block 1 is all free
    source.plan = CachePlan("e", 3, prefetch=(H[0], H[1]))  # H1 would have to displace H0
    assert applier.end_step({}).loads == [] and stats.prefetch_no_room == 1


def test_a_new_link_forgets_the_plan_and_a_host_reset_drops_every_block(make_pool):
    pool = make_pool(6, H[:5])
    applier, source, events = make_applier(pool, host_tier_blocks=2)
    source.plan = CachePlan("e", 1, evict_first=(H[2],))
    applier.refresh_plan()
    applier.forget_plan()
    assert applier.plan is None
    applier.refresh_plan()  # the same step: a new link's plan is taken and applied afresh
    assert (source.calls, applier.stats.plans_applied) == (2, 2)
    applier.host.admit(H[0])
    applier.reset_host_tier(5)
    assert applier.end_step({}).drops == [H[0]]
    assert events == [BlockRemoved("e", (H[0],), Tier.CPU)]
    assert (applier.host.capacity_blocks, len(applier.host)) == (5, 0)


def test_a_hash_evicted_and_cached_again_in_the_step_is_not_saved_from_its_new_block(
    make_pool, cache_blocks, request_of
):
    # vLLM caches a hash when it schedules the block, before the forward writes its KV: a
    # save ordered in that step (the worker saves before the forward) would copy the block's
    # old content under the new hash.
    pool = make_pool(4, [])  # 3 usable blocks
    applier, source, _ = make_applier(pool, host_tier_blocks=4)
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    pool.free_blocks(cache_blocks(pool, H[:2]))  # H0 in block 1, H1 in block 2
    reporter.report_block_changes()
    stable = reporter.stable_blocks()  # what the next step's save may read: blocks 1, 2
    # This step's scheduling: H0 evicted, then cached again in block 3 by a new request.
    pool.evict_blocks({1})
    (again,) = cache_blocks(pool, [H[0]])
    assert again.block_id == 3 and cached_block(pool, H[0]) is again
    source.plan = CachePlan("e", 1, offload=(H[0], H[1]))
    ops = applier.end_step(stable)
    assert ops.saves == [(H[1], 2)] and applier.host.hashes() == [H[1]]
    # The next step (block 3 computed, reported): it is saved from block 3.
    reporter.report_block_changes()
    assert applier.end_step(reporter.stable_blocks()).saves == [(H[0], 3)]


def test_a_block_dropped_in_a_step_is_not_saved_again_in_it(make_pool, cache_blocks, request_of):
    # The worker saves, then drops: a hash dropped and saved again in one step would be gone
    # from the store while the index holds it (a later load then fails).
    pool = make_pool(8, [])
    applier, source, _ = make_applier(pool, host_tier_blocks=2)
    reporter = applier.reporter
    reporter.request_started(request_of("a", H[:3]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:3])  # blocks 1..3, in use
    reporter.report_block_changes()
    applier.host.admit(H[0])
    applier.host.admit(H[1])
    # H2 displaces the listed H0; H0 (still on the GPU) comes next in the offload list.
    source.plan = CachePlan("e", 1, offload=(H[2], H[0]), host_drop_first=(H[0],))
    ops = applier.end_step(reporter.stable_blocks())
    assert (ops.saves, ops.drops) == ([(H[2], 3)], [H[0]])
    assert applier.host.hashes() == [H[1], H[2]]
    ops = applier.end_step(reporter.stable_blocks())  # the next step may save it again
    assert (ops.saves, ops.drops) == ([(H[0], 1)], [H[1]])


def test_drops_and_misses_on_dropped_blocks_are_counted_by_the_order_that_dropped_them(
    make_pool, cache_blocks, request_of
):
    pool = make_pool(8, [])
    applier, source, _ = make_applier(pool, host_tier_blocks=2, max_saves_per_step=1)
    reporter, stats = applier.reporter, applier.stats
    reporter.request_started(request_of("a", H[:3]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:3])  # blocks 1..3, in use
    reporter.report_block_changes()
    source.plan = CachePlan("e", 1, offload=(H[0], H[1]))
    applier.end_step(reporter.stable_blocks())  # H0 saved
    applier.end_step(reporter.stable_blocks())  # H1 saved: the tier is full
    source.plan = CachePlan("e", 2, offload=(H[2],), host_drop_first=(H[1],))
    assert applier.end_step(reporter.stable_blocks()).drops == [H[1]]  # the plan's choice
    assert (stats.host_dropped_plan, stats.host_dropped_lru) == (1, 0)
    # "b" hits H0 on the host tier and then misses H1, which the plan's order dropped.
    b = request_of("b", H[:4])
    assert applier.host_hit_tokens(b, num_computed_tokens=0) == 4
    assert stats.host_miss_dropped_plan == 1
    applier.host_hit_tokens(b, num_computed_tokens=0)  # looked up again: counted once
    assert stats.host_miss_dropped_plan == 1
    applier.forget("b")
    # "c" misses H5 first, which the tier never held: nobody's drop.
    assert applier.host_hit_tokens(request_of("c", [H[5], H[1]]), num_computed_tokens=0) == 0
    assert (stats.host_miss_dropped_plan, stats.host_miss_dropped_lru) == (1, 0)
    # No list: the tier's LRU drops H2 (b's lookup made H0 the most recent).
    source.plan = CachePlan("e", 3, offload=(H[1],))
    assert applier.end_step(reporter.stable_blocks()).drops == [H[2]]
    assert (stats.host_dropped_plan, stats.host_dropped_lru) == (1, 1)
    # "d" gets H0, H1 from the host tier and misses H2, dropped by LRU.
    assert applier.host_hit_tokens(request_of("d", H[:4]), num_computed_tokens=0) == 8
    assert (stats.host_miss_dropped_plan, stats.host_miss_dropped_lru) == (1, 1)


def test_the_managers_directory_follows_a_full_host_tier(make_pool, cache_blocks, request_of):
    from pbkv.cache_manager.manager import CacheManager, ManagerConfig
    from pbkv.engine_adapter.vllm.links import ManagerLink

    manager = CacheManager(ManagerConfig(policy="lru-offload"))
    manager.attach_engine("e", gpu_blocks=7, cpu_blocks=2, tokens_per_block=4)
    link = ManagerLink(manager, "e")
    pool = make_pool(8, [])
    stats = ConnectorStats()
    reporter = BlockReporter("e", block_size=4, step_blocks=1, send=link.send, stats=stats)
    source = PlanSource()
    applier = PlanApplier(reporter, source, stats, step_blocks=1, host_tier_blocks=2)
    reporter.pool = applier.pool = pool
    reporter.request_started(request_of("a", H[:3]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:3])
    reporter.report_block_changes()
    source.plan = CachePlan("e", 1, offload=(H[0], H[1]))
    applier.end_step(reporter.stable_blocks())  # the tier is full: H0, H1
    assert manager.stats().cpu_blocks_cached == 2
    source.plan = CachePlan("e", 2, offload=(H[2],))
    assert applier.end_step(reporter.stable_blocks()).drops == [H[0]]  # LRU makes room for H2
    # The manager saw the drop, then the store: it holds what the tier holds, no event refused.
    assert (manager.stats().cpu_blocks_cached, link.num_errors) == (2, 0)
