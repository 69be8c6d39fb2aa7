from pbkv.engine_adapter.vllm.plan_order import (
    apply_plan,
    cached_block,
    eviction_possible,
    free_queue_ids,
)

H = [bytes([i]) * 32 for i in range(8)]


def test_unplanned_pool_is_lru_with_uncached_blocks_first(make_pool):
    pool = make_pool(8, H[:4])  # blocks 1..4 cache H0..H3; 5..7 never used
    assert free_queue_ids(pool) == [5, 6, 7, 1, 2, 3, 4]


def test_evict_first_goes_behind_never_used_then_unnamed_by_lru(make_pool):
    pool = make_pool(9, H[:5])  # cached blocks 1..5 (H0..H4), never used 6..8
    result = apply_plan(pool, evict_first=(H[3], H[2]))
    # Never-used blocks first (handing them out evicts nothing), then H3, H2, then the unnamed
    # H0, H1, H4 in LRU order.
    assert free_queue_ids(pool) == [6, 7, 8, 4, 3, 1, 2, 5]
    assert pool.free_block_queue.num_free_blocks == 8
    assert result.moved_to_head == 2 and result.missing == 0


def test_evict_first_does_not_evict_while_never_used_blocks_are_free(make_pool):
    pool = make_pool(8, H[:2])
    apply_plan(pool, evict_first=(H[0], H[1]))
    pool.get_new_blocks(5)  # the five never-used blocks
    assert cached_block(pool, H[0]) is not None and cached_block(pool, H[1]) is not None
    assert [b.block_id for b in pool.get_new_blocks(1)] == [1]  # now H0 goes first
    assert cached_block(pool, H[0]) is None


def test_allocation_follows_the_plan(make_pool):
    pool = make_pool(6, H[:5])  # every block cached: allocation must evict
    apply_plan(pool, evict_first=(H[4], H[2]))
    got = pool.get_new_blocks(4)
    assert [b.block_id for b in got] == [5, 3, 1, 2]  # the plan's, then LRU; H3 survives
    assert cached_block(pool, H[3]) is not None
    assert all(cached_block(pool, h) is None for h in (H[0], H[1], H[2], H[4]))


def test_missing_and_in_use_blocks_are_ignored(make_pool):
    pool = make_pool(8, H[:3])
    pool.touch([cached_block(pool, H[0])])  # in use by a request: not in the free queue
    before = free_queue_ids(pool)
    result = apply_plan(pool, evict_first=(H[7], H[0], H[6]))
    assert free_queue_ids(pool) == before
    assert result.missing == 2 and result.moved_to_head == 0


def test_eviction_is_possible_only_within_reach_of_a_cached_block(make_pool):
    pool = make_pool(8, H[:4])  # head: never-used 5, 6, 7; then cached 1..4
    assert not eviction_possible(pool, 3)
    assert eviction_possible(pool, 4)
    pool.get_new_blocks(2)
    assert eviction_possible(pool, 2) and not eviction_possible(pool, 1)
    empty = make_pool(4, [])
    pool_size = empty.free_block_queue.num_free_blocks
    assert not eviction_possible(empty, pool_size)
    assert eviction_possible(empty, pool_size + 1)  # the queue runs out: allocation would fail


def test_a_hash_cached_twice_moves_with_both_copies(make_pool, cache_blocks):
    from pbkv.engine_adapter.vllm.plan_order import cached_copies

    pool = make_pool(9, H[:3])  # cached blocks 1..3 (H0..H2), never used 4..8
    # A request that hit all of H0..H2 recomputes the last block into a new one: H2 twice.
    [copy] = cache_blocks(pool, [H[2]])
    pool.free_blocks([copy])
    assert copy.block_id == 4 and {b.block_id for b in cached_copies(pool, H[2])} == {3, 4}
    assert free_queue_ids(pool) == [5, 6, 7, 8, 1, 2, 3, 4]
    result = apply_plan(pool, evict_first=(H[2], H[0], H[1]))
    # Both copies of H2 go first; with one copy left at the tail, H0 and H1 (which the plan
    # ranks above H2) would be evicted before it.
    assert free_queue_ids(pool) == [5, 6, 7, 8, 3, 4, 1, 2]
    assert result.moved_to_head == 4 and result.missing == 0
