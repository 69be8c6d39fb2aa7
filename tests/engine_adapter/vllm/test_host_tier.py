import pytest
import torch

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import host_rank
from pbkv.engine_adapter.vllm.host_tier import HostKVStore, HostTierIndex, HostTierOps

H = [bytes([i]) * 32 for i in range(8)]


def test_capacity_bound_evicts_lru_among_unnamed():
    tier = HostTierIndex(2)
    assert tier.admit(H[0]) == (True, [])
    assert tier.admit(H[1]) == (True, [])
    tier.touch(H[0])  # H1 is now the least recently used
    assert tier.admit(H[2]) == (True, [H[1]])
    assert tier.hashes() == [H[0], H[2]]


def test_victims_follow_plan_order():
    tier = HostTierIndex(3)
    for h in H[:3]:
        tier.admit(h)
    # H2 named evict-first goes before the older unnamed H0, H1.
    rank = host_rank(CachePlan("e", 1, evict_first=(H[2],)))
    assert tier.admit(H[3], rank) == (True, [H[2]])
    # Now full of H0, H1, H3: H1 before H0 by the plan, though H0 is older.
    assert tier.admit(H[4], host_rank(CachePlan("e", 2, evict_first=(H[1], H[0])))) == (
        True,
        [H[1]],
    )
    # No plan: the oldest, H0.
    assert tier.admit(H[5]) == (True, [H[0]])


def test_less_valuable_block_is_not_admitted_into_a_tier_of_more_valuable_blocks():
    tier = HostTierIndex(2)
    tier.admit(H[0])
    tier.admit(H[1])
    rank = host_rank(CachePlan("e", 1, evict_first=(H[3], H[0])))
    assert tier.admit(H[3], rank) == (False, [])  # worth less than the named victim H0
    assert len(tier) == 2 and tier.hashes() == [H[0], H[1]]


def test_a_named_block_displaces_unnamed_ones_by_lru():
    # A policy that ranks every GPU block names none of the blocks only the host tier holds:
    # they must not lock the tier against the plan's offloads.
    tier = HostTierIndex(2)
    tier.admit(H[0])
    tier.admit(H[1])
    tier.touch(H[0])
    rank = host_rank(CachePlan("e", 1, evict_first=(H[3], H[2])))
    assert tier.admit(H[2], rank) == (True, [H[1]])
    assert tier.admit(H[3], rank) == (False, [])  # the victim now is H2, named and worth more
    assert tier.hashes() == [H[0], H[2]]


def test_pinned_blocks_are_never_victims():
    tier = HostTierIndex(1)
    tier.admit(H[0])
    assert tier.admit(H[1], pinned=frozenset({H[0]})) == (False, [])


def test_matched_prefix_stops_at_first_gap():
    tier = HostTierIndex(4)
    for h in (H[0], H[1], H[3]):
        tier.admit(h)
    assert tier.matched_prefix([H[0], H[1], H[2], H[3]]) == 2
    assert tier.matched_prefix([H[2], H[0]]) == 0


def test_zero_capacity_and_bad_capacity():
    assert HostTierIndex(0).admit(H[0]) == (False, [])
    with pytest.raises(ValueError, match="capacity_blocks"):
        HostTierIndex(-1)


def test_store_round_trips_blocks_between_paged_tensors():
    # Two layers, paged layout with blocks on dim 1 (as vLLM's [2, num_blocks, ...]).
    layers = {
        "l0": torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3),
        "l1": -torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3),
    }
    original = {k: v.clone() for k, v in layers.items()}
    store = HostKVStore()
    store.register(layers, num_blocks=4)
    store.execute(HostTierOps(saves=[(H[0], 1)]))
    for t in layers.values():
        t[:, 1] = 0  # the paged block is reused and overwritten
    store.execute(HostTierOps(loads=[(H[0], 3)], drops=[H[0]]))
    for name, t in layers.items():
        assert torch.equal(t[:, 3], original[name][:, 1])
    assert store.blocks == {}


def test_a_save_and_a_load_of_the_same_block_save_the_old_content_first():
    layers = {"l0": torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)}
    old = layers["l0"][:, 2].clone()
    store = HostKVStore()
    store.register(layers, num_blocks=4)
    store.execute(HostTierOps(saves=[(H[1], 0)]))
    # block 2 is saved as H0 while a prefetch of H1 reuses it in the same step
    store.execute(HostTierOps(saves=[(H[0], 2)], loads=[(H[1], 2)]))
    assert torch.equal(store.blocks[H[0]][0], old)
    assert torch.equal(layers["l0"][:, 2], layers["l0"][:, 0])


def test_store_rejects_layouts_without_a_block_dimension():
    with pytest.raises(RuntimeError, match="num_blocks=5"):
        HostKVStore().register({"l0": torch.zeros(2, 4, 3)}, num_blocks=5)
