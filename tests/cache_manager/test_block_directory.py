from __future__ import annotations

import pytest

from pbkv.cache_manager.block_directory import BlockDirectory, Residency
from pbkv.cache_manager.errors import (
    CacheManagerError,
    HashChainConflict,
    UnknownBlock,
    UnknownRequest,
)
from pbkv.cache_manager.events import Tier


def make(gpu: int = 4, cpu: int = 4) -> BlockDirectory:
    return BlockDirectory(
        "e0", gpu_blocks=gpu, cpu_blocks=cpu, tokens_per_block=16, bytes_per_token=8
    )


def snapshot(d: BlockDirectory) -> dict:
    return {
        b.block_hash: (
            b.parent,
            b.depth,
            b.gpu_copies,
            b.cpu_copies,
            b.ref_cnt,
            b.num_children,
            tuple(b.users),
        )
        for b in d
    }


def test_tree_tiers_refs_and_pruning() -> None:
    d = make()
    # A request's prompt chain is learned with no tier, held by the request.
    d.request_started("r1", (b"a", b"b"), ("w1", "Coder"), now_s=1.0)
    d.check_integrity()
    assert [(b.block_hash, b.depth, b.residency, b.ref_cnt) for b in d] == [
        (b"a", 0, Residency.NONE, 1),
        (b"b", 1, Residency.NONE, 1),
    ]
    # Prefill done: both blocks cached on the GPU.
    d.store((b"a", b"b"), None, Tier.GPU, now_s=2.0)
    d.check_integrity()
    assert d.gpu_used == 2 and d.get(b"b").residency is Residency.GPU
    assert d.token_offset(d.get(b"b")) == 16 and d.bytes_per_block == 128
    # A second prompt shares the root block and branches.
    d.request_started("r2", (b"a", b"c"), ("w2", "Coder"), now_s=3.0)
    d.check_integrity()
    assert d.get(b"a").num_children == 2 and d.get(b"a").ref_cnt == 2
    assert list(d.get(b"a").users) == [("w1", "Coder"), ("w2", "Coder")]
    # r2 ends before its block was stored: the uncached leaf "c" is dropped.
    d.request_finished("r2", now_s=4.0)
    d.check_integrity()
    assert b"c" not in d and d.get(b"a").num_children == 1
    # "b" offloaded (CPU copy), then evicted from the GPU: it lives on in the CPU tier.
    d.store((b"b",), b"a", Tier.CPU)
    d.remove((b"b",), Tier.GPU)
    d.check_integrity()
    assert d.get(b"b").residency is Residency.CPU and d.cpu_used == 1 and d.gpu_used == 1
    # r1 ends; "a" leaves the GPU but stays as the (tierless) parent of the CPU block "b".
    d.request_finished("r1")
    d.remove((b"a",), Tier.GPU)
    d.check_integrity()
    assert d.get(b"a").residency is Residency.NONE
    # The last copy of "b" goes: both nodes are pruned.
    d.remove((b"b",), Tier.CPU)
    d.check_integrity()
    assert len(d) == 0


def test_duplicate_gpu_copies_are_counted() -> None:
    d = make()
    d.store((b"a",), None, Tier.GPU)
    d.store((b"a",), None, Tier.GPU)  # vLLM can cache one hash in two blocks
    assert d.get(b"a").gpu_copies == 2 and d.gpu_used == 2
    d.remove((b"a",), Tier.GPU)
    d.check_integrity()
    assert d.get(b"a").gpu_copies == 1


def test_clear_one_tier_then_all() -> None:
    d = make()
    d.store((b"a", b"b"), None, Tier.GPU)
    d.store((b"a",), None, Tier.CPU)
    d.clear(Tier.GPU)
    d.check_integrity()
    assert [(b.block_hash, b.residency) for b in d] == [(b"a", Residency.CPU)]
    d.clear()
    d.check_integrity()
    assert len(d) == 0 and d.gpu_used == d.cpu_used == 0


@pytest.mark.parametrize(
    "field,value",
    [("gpu_blocks", 0), ("tokens_per_block", 0), ("cpu_blocks", -1), ("gpu_blocks", 2.5)],
)
def test_bad_capacities_are_rejected(field: str, value: object) -> None:
    kwargs = {"gpu_blocks": 4, "cpu_blocks": 4, "tokens_per_block": 16}
    kwargs[field] = value
    with pytest.raises(CacheManagerError, match=field):
        BlockDirectory("e0", **kwargs)


def test_bad_events_change_nothing() -> None:
    d = make(gpu=3)
    d.request_started("r1", (b"a", b"b"), None, now_s=1.0)
    d.store((b"a", b"b"), None, Tier.GPU)
    before = snapshot(d)
    cases = [
        (UnknownBlock, "parent_hash", lambda: d.store((b"x",), b"missing", Tier.GPU)),
        (HashChainConflict, "has parent", lambda: d.store((b"q", b"b"), None, Tier.GPU)),
        (HashChainConflict, "repeats", lambda: d.store((b"q", b"q"), None, Tier.GPU)),
        (CacheManagerError, "capacity", lambda: d.store((b"x", b"y"), None, Tier.GPU)),
        (UnknownBlock, "holds 0 copies", lambda: d.remove((b"a", b"zz"), Tier.GPU)),
        (UnknownBlock, "holds 1 copies", lambda: d.remove((b"a", b"a"), Tier.GPU)),
        (UnknownBlock, "holds 0 copies", lambda: d.remove((b"a",), Tier.CPU)),
        (UnknownRequest, "r9", lambda: d.request_finished("r9")),
        (CacheManagerError, "started twice", lambda: d.request_started("r1", (b"a",), None, None)),
        (CacheManagerError, r"block_hashes\[1\]", lambda: d.store((b"k", ""), None, Tier.GPU)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()
        d.check_integrity()
        assert snapshot(d) == before


def test_removed_twice_is_an_error() -> None:
    d = make()
    d.store((b"a",), None, Tier.GPU)
    d.remove((b"a",), Tier.GPU)
    with pytest.raises(UnknownBlock, match="removed from gpu"):
        d.remove((b"a",), Tier.GPU)
    d.check_integrity()


def test_users_are_bounded_most_recent_kept() -> None:
    d = BlockDirectory("e0", gpu_blocks=2, cpu_blocks=0, tokens_per_block=4, max_users_per_block=2)
    for i in range(4):
        d.request_started(f"r{i}", (b"a",), (f"w{i}", "A"), now_s=float(i))
    d.check_integrity()
    assert list(d.get(b"a").users) == [("w2", "A"), ("w3", "A")]
    assert d.get(b"a").last_access_s == 3.0
