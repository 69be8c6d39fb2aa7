"""The order in which an engine evicts, writes back and prefetches, given a ``CachePlan``.

One contract, read by every engine (the simulator in ``engine_adapter/sim`` and the vLLM
adapter's free queue, host tier and native-offload policy); pure functions of the plan and of
the engine's own LRU order, no engine state::

    first out                                                                  last out
    | plan.evict_first, in plan order | blocks the plan does not name: LRU, oldest first |
    '------------------------ eviction_order(plan, lru) --------------------------------'
    '-- prefetch_victims: the same order without the plan's prefetch blocks --'

    write-back (host tier) candidates, most valuable first:
    | plan.offload (ranked) | computed blocks the plan does not name, newest first (unranked) |

    host-tier rank (smallest dropped first):
        host_drop_first[0] < ... < host_drop_first[-1] < evict_first (not in host_drop_first)
        < unnamed (the tier's LRU)

* No plan (or a stale one, or ``fallback_lru``): the engine's plain LRU; these functions are
  not consulted.
* A hash the engine no longer holds is skipped by the caller (plans may name dropped blocks).
* An unranked write-back candidate only takes free host room; it never displaces a block.
* A prefetch takes a free slot or the next ``prefetch_victims`` block; it never displaces
  another block the same plan prefetches.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import islice

from pbkv.cache_manager.events import CachePlan


def named(plan: CachePlan) -> frozenset[bytes]:
    """Blocks whose eviction place the plan sets (the rest go by the engine's LRU)."""
    return frozenset(plan.evict_first)


def eviction_order(
    plan: CachePlan, lru_oldest_first: Iterable[bytes], plan_named: Collection[bytes] | None = None
) -> Iterator[bytes]:
    """Evictable blocks, first to evict first: ``plan.evict_first``, then the blocks of
    ``lru_oldest_first`` the plan does not name. ``plan_named``: ``named(plan)``, when the
    caller keeps it per plan. Iterated lazily; the caller filters what it cannot evict."""
    yield from plan.evict_first
    skip = named(plan) if plan_named is None else plan_named
    for h in lru_oldest_first:
        if h not in skip:
            yield h


def prefetch_spared(plan: CachePlan) -> frozenset[bytes]:
    """Blocks a prefetch never displaces: the plan's own prefetch blocks."""
    return frozenset(plan.prefetch)


def prefetch_victims(
    plan: CachePlan,
    lru_oldest_first: Iterable[bytes],
    plan_named: Collection[bytes] | None = None,
    spared: Collection[bytes] | None = None,
) -> Iterator[bytes]:
    """The blocks a prefetch may displace, in the order it displaces them."""
    keep = prefetch_spared(plan) if spared is None else spared
    for h in eviction_order(plan, lru_oldest_first, plan_named):
        if h not in keep:
            yield h


def write_through_candidates(
    plan: CachePlan, computed_newest_first: Iterable[bytes]
) -> Iterator[tuple[bytes, bool]]:
    """Blocks to copy to the host tier, most valuable first, each with whether the plan ranked
    it: the plan's ``offload`` list, then computed blocks the plan does not name (newest
    first; never its ``evict_first``). Callers copy an unranked block only into free room."""
    for h in plan.offload:
        yield h, True
    skip = set(plan.evict_first) | set(plan.offload)
    for h in computed_newest_first:
        if h not in skip:
            yield h, False


def host_rank(plan: CachePlan | None) -> Callable[[bytes], int]:
    """Sort key of a host-tier block, smallest dropped first: ``host_drop_first`` blocks in
    plan order, then ``evict_first`` blocks in plan order (all negative), every other block 0
    (callers break ties by LRU, oldest first)."""
    if plan is None:
        return lambda h: 0
    n = len(plan.evict_first)
    first = {h: i - n for i, h in enumerate(plan.evict_first)}
    m = len(plan.host_drop_first) + n
    first.update((h, i - m) for i, h in enumerate(plan.host_drop_first))
    return lambda h: first.get(h, 0)


def host_drop_order(
    plan: CachePlan,
    lru_oldest_first: Iterable[bytes],
    *,
    start: int = 0,
    host_named: Collection[bytes] | None = None,
) -> Iterator[bytes]:
    """Host-tier blocks, first to drop first: ``host_drop_first`` (from index ``start``: the
    caller's cursor past blocks it no longer holds), then the tier's LRU order of the blocks
    the list does not name (``host_named``: ``frozenset(plan.host_drop_first)``, when the
    caller keeps it per plan). This is ``host_rank``'s order when ``evict_first`` names no
    CPU copy; the simulator's tier reads it. Lazy; the caller skips what it cannot drop."""
    yield from islice(plan.host_drop_first, start, None)
    skip = frozenset(plan.host_drop_first) if host_named is None else host_named
    for h in lru_oldest_first:
        if h not in skip:
            yield h
