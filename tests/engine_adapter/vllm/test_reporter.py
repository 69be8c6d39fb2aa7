"""``BlockReporter`` against a real vLLM ``BlockPool`` (no engine): which events it sends, step
by step, with exact hashes and parents."""

from __future__ import annotations

import pytest

from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.engine_adapter.vllm.reporter import BlockReporter
from pbkv.engine_adapter.vllm.stats import ConnectorStats
from pbkv.engine_adapter.vllm.tags import make_extra_args

H = [bytes([i]) * 32 for i in range(8)]


@pytest.fixture
def rig(make_pool):
    """A reporter over an 11-block pool (block 0 is vLLM's null block), nothing cached."""
    pool = make_pool(12, [])
    events: list = []
    stats = ConnectorStats()
    reporter = BlockReporter("e", block_size=4, step_blocks=2, send=events.append, stats=stats)
    reporter.pool = pool
    return pool, reporter, events, stats


def gpu_stored(hashes, parent):
    return BlockStored("e", tuple(hashes), parent, 4, Tier.GPU)


def test_blocks_a_request_fills_are_reported_once_in_chain_order(rig, cache_blocks, request_of):
    pool, reporter, events, stats = rig
    a = request_of("a", H[:4], tags=make_extra_args("w1", "Coder"))
    reporter.gpu_hit("a", 0)
    reporter.request_started(a, num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:2])  # the first step computes two blocks ...
    reporter.report_block_changes()
    cache_blocks(pool, H[2:3])  # ... the next one more
    reporter.report_block_changes()
    reporter.report_block_changes()  # nothing changed: nothing sent
    reporter.request_started(a, num_cpu_hit_blocks=0)  # a later allocation: not a new start
    assert events == [
        RequestStarted("e", "a", tuple(H[:4]), 17, 0, 0, "w1", "Coder", "default"),
        gpu_stored(H[:2], None),
        gpu_stored(H[2:3], H[1]),
    ]
    assert (stats.requests_tagged, stats.requests_anonymous) == (1, 0)


def test_a_shared_prefix_is_reported_once_and_the_rest_chains_to_it(rig, cache_blocks, request_of):
    pool, reporter, events, stats = rig
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:2])
    reporter.report_block_changes()
    events.clear()
    b = request_of("b", [H[0], H[1], H[5]])
    reporter.gpu_hit("b", 2)  # b's first two blocks are prefix-cache hits
    reporter.request_started(b, num_cpu_hit_blocks=0)
    cache_blocks(pool, H[5:6])
    reporter.report_block_changes()
    assert events == [
        RequestStarted("e", "b", (H[0], H[1], H[5]), 13, 2, 0),
        gpu_stored(H[5:6], H[1]),
    ]
    assert (stats.requests_tagged, stats.requests_anonymous) == (0, 2)
    assert reporter.gpu_hashes() == {H[0], H[1], H[5]}
    assert list(reporter.gpu_hashes_newest_first()) == [H[5], H[1], H[0]]
    assert [reporter.depth(h) for h in (H[0], H[1], H[5], H[7])] == [0, 1, 2, 0]


def test_a_finished_request_reports_its_last_blocks_then_ends(rig, cache_blocks, request_of):
    pool, reporter, events, _ = rig
    a = request_of("a", H[:3], num_output_tokens=5)
    reporter.request_started(a, num_cpu_hit_blocks=1)
    cache_blocks(pool, H[:3])  # computed in the request's last step: not reported yet
    reporter.request_finished(a)
    reporter.request_finished(request_of("never-started", H[:1]))  # aborted before allocation
    assert events[1:] == [
        gpu_stored(H[:3], None),
        RequestFinished("e", "a", 5),
        RequestFinished("e", "never-started", 0),
    ]
    assert events[0].num_cpu_hit_blocks == 1
    assert dict(reporter.live) == {}


def test_an_evicted_block_is_removed_unless_a_duplicate_still_caches_its_hash(
    rig, cache_blocks, request_of
):
    pool, reporter, events, _ = rig
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    blocks_a = cache_blocks(pool, H[:2])  # blocks 1, 2
    reporter.report_block_changes()
    cache_blocks(pool, H[:1])  # block 3 caches H0 as well (vLLM allows duplicates)
    pool.free_blocks(blocks_a)  # free queue: never-used 4..11, then 1, 2
    events.clear()
    pool.get_new_blocks(9)  # 4..11 and block 1: evicts block 1's copy of H0
    reporter.report_block_changes()
    assert events == []  # block 3 still caches H0
    pool.evict_blocks({2, 3})  # now both H1 and the last copy of H0 go
    reporter.report_block_changes()
    assert events == [BlockRemoved("e", (H[0], H[1]), Tier.GPU)]
    assert reporter.gpu_hashes() == set()


def test_evictions_are_looked_for_only_when_possible_or_after_a_cache_reset(
    rig, cache_blocks, request_of
):
    pool, reporter, events, _ = rig
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    pool.free_blocks(cache_blocks(pool, H[:2]))  # 9 never-used blocks head the free queue
    reporter.report_block_changes()
    reporter.end_step()  # a step takes at most 2 blocks: nothing cached can go next step
    events.clear()
    pool.evict_blocks({1})  # (only allocation evicts in vLLM; this shows the look is skipped)
    reporter.report_block_changes()
    assert events == []
    assert pool.reset_prefix_cache()  # a new hash map: the next report looks again
    reporter.report_block_changes()
    assert events == [BlockRemoved("e", (H[0], H[1]), Tier.GPU)]


def test_host_tier_blocks_keep_their_parent_and_are_resynced(rig, cache_blocks, request_of):
    pool, reporter, events, _ = rig
    reporter.request_started(request_of("a", H[:3]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:3])
    reporter.report_block_changes()
    reporter.cpu_stored([H[2], H[1]])
    pool.evict_blocks({2, 3})  # H1, H2 leave the GPU; their host copies stay
    reporter.report_block_changes()
    assert events[2:] == [
        BlockStored("e", (H[2],), H[1], 4, Tier.CPU),
        BlockStored("e", (H[1],), H[0], 4, Tier.CPU),
        BlockRemoved("e", (H[1], H[2]), Tier.GPU),
    ]
    assert reporter.parent(H[2]) == H[1] and reporter.knows(H[1])
    events.clear()
    reporter.resync([H[1], H[2]])
    assert events == [
        AllBlocksCleared("e", None),
        gpu_stored(H[:1], None),
        BlockStored("e", (H[1],), H[0], 4, Tier.CPU),
        BlockStored("e", (H[2],), H[1], 4, Tier.CPU),
    ]
    events.clear()
    reporter.cpu_removed([])
    reporter.cpu_removed([H[2]])
    assert events == [BlockRemoved("e", (H[2],), Tier.CPU)]
    assert not reporter.knows(H[2]) and reporter.knows(H[1])


def test_forgetting_the_gpu_tier_reports_it_again_and_keeps_host_parents(
    rig, cache_blocks, request_of
):
    pool, reporter, events, _ = rig
    reporter.request_started(request_of("a", H[:2]), num_cpu_hit_blocks=0)
    cache_blocks(pool, H[:2])
    reporter.report_block_changes()
    reporter.cpu_stored([H[1]])
    events.clear()
    reporter.forget_gpu()  # a fresh link
    assert reporter.gpu_hashes() == set() and not reporter.knows(H[0])
    assert reporter.parent(H[1]) == H[0]
    reporter.report_block_changes()
    assert events == [gpu_stored(H[:2], None)]
