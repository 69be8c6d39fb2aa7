import pytest
import torch

from pbkv.cache_manager.events import CachePlan
from pbkv.engine_adapter.vllm.host_tier import (
    DROPS_REMEMBERED_PER_BLOCK,
    HostKVStore,
    HostTierIndex,
    HostTierOps,
)

H = [bytes([i]) * 32 for i in range(8)]


def test_capacity_bound_evicts_lru_among_unnamed():
    tier = HostTierIndex(2)
    assert tier.admit(H[0]) == (True, [])
    assert tier.admit(H[1]) == (True, [])
    tier.touch(H[0])  # H1 is now the least recently used
    assert tier.admit(H[2]) == (True, [H[1]])
    assert tier.hashes() == [H[0], H[2]]


def test_victims_follow_host_drop_first_then_lru():
    tier = HostTierIndex(3)
    for h in H[:3]:
        tier.admit(h)
    # H2 listed to drop first goes before the older unlisted H0, H1.
    assert tier.admit(H[3], CachePlan("e", 1, host_drop_first=(H[2],))) == (True, [H[2]])
    # Full of H0, H1, H3: H1 before H0 by the list, though H0 is older.
    assert tier.admit(H[4], CachePlan("e", 2, host_drop_first=(H[1], H[0]))) == (True, [H[1]])
    # evict_first (the GPU's order) does not order the host tier: the oldest, H0.
    assert tier.admit(H[5], CachePlan("e", 3, evict_first=(H[4], H[3]))) == (True, [H[0]])
    # No plan: the oldest, H3.
    assert tier.admit(H[6]) == (True, [H[3]])
    assert tier.hashes() == [H[4], H[5], H[6]]


def test_spare_copies_go_before_the_plan_order_oldest_first():
    tier = HostTierIndex(3)
    for h in H[:3]:
        tier.admit(h)
    spare = {H[1], H[2]}.__contains__  # copies of GPU blocks far from eviction
    plan = CachePlan("e", 1, host_drop_first=(H[0],))
    assert tier.admit(H[3], plan, spare=spare) == (True, [H[1]])
    assert tier.admit(H[4], plan, spare=spare) == (True, [H[2]])
    assert tier.admit(H[5], plan, spare=spare) == (True, [H[0]])  # no spare left: the list
    # A pinned spare copy stays; the next spare one goes.
    tier2 = HostTierIndex(2)
    tier2.admit(H[0])
    tier2.admit(H[1])
    assert tier2.admit(H[2], None, frozenset({H[0]}), spare=lambda h: True) == (True, [H[1]])


def test_each_victim_remembers_the_order_that_dropped_it_until_written_again():
    tier = HostTierIndex(2)
    tier.admit(H[0])
    tier.admit(H[1])
    assert tier.drop_reason(H[0]) is None  # held
    # Listed by the plan: H1 goes, by the plan's order.
    assert tier.admit(H[2], CachePlan("e", 1, host_drop_first=(H[1],))) == (True, [H[1]])
    # Nothing listed: the oldest, H0, by LRU.
    assert tier.admit(H[3], CachePlan("e", 2)) == (True, [H[0]])
    # A spare copy goes first whatever the list says.
    plan = CachePlan("e", 3, host_drop_first=(H[2],))
    assert tier.admit(H[4], plan, spare={H[3]}.__contains__) == (True, [H[3]])
    assert [tier.drop_reason(h) for h in H[:5]] == ["lru", "plan", None, "spare", None]
    tier.admit(H[1], plan)  # written again: H1 held (H2 dropped by the list)
    assert (tier.drop_reason(H[1]), tier.drop_reason(H[2])) == (None, "plan")


def test_only_the_last_victims_are_remembered():
    tier = HostTierIndex(1)  # remembers DROPS_REMEMBERED_PER_BLOCK victims
    blocks = [bytes([i, j]) * 16 for i in range(2) for j in range(DROPS_REMEMBERED_PER_BLOCK)]
    for h in blocks:
        tier.admit(h)
    victims = blocks[:-1]  # the last one is held
    assert tier.drop_reason(victims[0]) is None  # forgotten: one too many
    assert all(tier.drop_reason(h) == "lru" for h in victims[-DROPS_REMEMBERED_PER_BLOCK:])


def test_lookup_refreshes_recency_prompt_head_last():
    tier = HostTierIndex(3)
    for h in H[:3]:
        tier.admit(h)
    tier.touch_prompt([H[1], H[7], H[0]])  # H7 not held: ignored
    assert tier.hashes() == [H[2], H[0], H[1]]  # the prompt's head, H1, most recent
    assert tier.admit(H[3]) == (True, [H[2]])


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
