"""cache_manager.plan_order: the one order every engine reads a plan in."""

from __future__ import annotations

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import (
    eviction_order,
    host_drop_order,
    host_rank,
    named,
    prefetch_spared,
    prefetch_victims,
    write_through_candidates,
)
from pbkv.cache_manager.scorer import Outlook, Scorer, any_reuse, combine

H = [bytes([i]) * 4 for i in range(8)]


def test_eviction_order_is_evict_first_then_unnamed_lru() -> None:
    plan = CachePlan("e", 1, evict_first=(H[5], H[2]), prefetch=(H[2],))
    lru = [H[0], H[2], H[1], H[5], H[3]]
    assert named(plan) == {H[5], H[2]}
    assert list(eviction_order(plan, lru)) == [H[5], H[2], H[0], H[1], H[3]]
    assert list(eviction_order(plan, lru, frozenset())) == [H[5], H[2], *lru]
    # A prefetch never displaces another block the same plan prefetches.
    assert prefetch_spared(plan) == {H[2]}
    assert list(prefetch_victims(plan, lru)) == [H[5], H[0], H[1], H[3]]


def test_write_through_candidates_ranked_offload_then_unnamed_newest_first() -> None:
    plan = CachePlan("e", 1, evict_first=(H[1], H[4]), offload=(H[4], H[6]))
    newest_first = [H[7], H[6], H[4], H[3], H[1], H[0]]
    assert list(write_through_candidates(plan, newest_first)) == [
        (H[4], True),
        (H[6], True),
        (H[7], False),
        (H[3], False),
        (H[0], False),
    ]


def test_host_rank_orders_evict_first_before_unnamed() -> None:
    rank = host_rank(CachePlan("e", 1, evict_first=(H[3], H[1])))
    assert [rank(h) for h in (H[3], H[1], H[0])] == [-2, -1, 0]
    assert host_rank(None)(H[3]) == 0


def test_host_rank_and_drop_order_put_host_drop_first_before_everything() -> None:
    plan = CachePlan("e", 1, evict_first=(H[3], H[1]), host_drop_first=(H[5], H[1]))
    rank = host_rank(plan)
    assert [rank(h) for h in (H[5], H[1], H[3], H[0])] == [-4, -3, -2, 0]
    lru = [H[0], H[1], H[2], H[5]]
    assert list(host_drop_order(plan, lru)) == [H[5], H[1], H[0], H[2]]
    assert list(host_drop_order(plan, lru, start=1, host_named={H[5], H[1]})) == [
        H[1],
        H[0],
        H[2],
    ]


def test_any_reuse_is_the_one_product_used_by_combine_and_the_scorer() -> None:
    outlooks = [
        Outlook(0.3, 2.0, 0.5, 0.1),
        Outlook(0.6, None, 0.9, 0.45),
        Outlook(0.15, 1.0, 0.2, 0.7),
    ]
    p = any_reuse(o.p for o in outlooks)
    assert p == 1.0 - (1.0 - 0.3) * (1.0 - 0.6) * (1.0 - 0.15)
    assert any_reuse([]) == 0.0
    merged = combine(outlooks)
    assert merged == Outlook(p, 1.0, 0.9, any_reuse(o.p_soon for o in outlooks))
    s = Scorer().score(
        outlooks,
        start_token=0,
        num_tokens=16,
        chain_end_token=16,
        on_cpu=False,
        age_s=None,
        block_hash=H[1],
        consumers=3,
    )
    w = min(1.0, 0.9 / Scorer().config.full_trust_confidence)
    assert (s.block_hash, s.consumers, s.eta_steps, s.p_reuse) == (H[1], 3, 1.0, w * p)
