"""The two-tier baselines (``cache_manager/baselines.py``) checked step by step against what
the systems they stand for do (sources in docs/cache-manager.md, "Baselines").

Tiny engine: 4-token blocks of 4 bytes, a 4 bytes/s link each way (one block moves in 1 s).
"""

from __future__ import annotations

import pytest
from sim_support import COST, H

from pbkv.cache_manager.baselines import (
    NON_PREDICTIVE_TWO_TIER,
    HicachePolicy,
    VllmOffloadPolicy,
    engine_options,
)
from pbkv.cache_manager.events import BlockStored, Tier
from pbkv.cache_manager.manager import CacheManager, ManagerConfig
from pbkv.cache_manager.policies import POLICIES
from pbkv.engine_adapter.sim.attach import attach_manager
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine, SimRequest


def toks(seed: int, n_blocks: int) -> tuple[int, ...]:
    return tuple(1000 * seed + i for i in range(4 * n_blocks + 1))


class Rig:
    def __init__(self, policy: str, gpu: int, cpu: int) -> None:
        self.events: list = []
        cfg = EngineConfig(
            gpu_blocks=gpu, cpu_blocks=cpu, tokens_per_block=4, **engine_options(policy)
        )
        self.engine = SimEngine(cfg, COST, sink=self.events.append, plans=None)

    def run(self, rid: str, tokens: tuple[int, ...]):
        self.engine.submit(SimRequest(rid, tokens, 1, "w", "a"))
        (done,) = self.engine.run()
        self.engine.check_integrity()
        return done


def test_registered_as_non_predictive_two_tier_baselines_naming_no_block() -> None:
    assert NON_PREDICTIVE_TWO_TIER == ("lru-offload", "hicache", "vllm-offload", "continuum")
    cfg = ManagerConfig(policy="hicache")
    assert cfg.policy_config is None  # no knobs: the engine's options make the difference
    assert isinstance(POLICIES.create("hicache", None, cfg.horizon), HicachePolicy)
    assert isinstance(POLICIES.create("vllm-offload", None, cfg.horizon), VllmOffloadPolicy)
    assert engine_options("lru-offload") == {} and engine_options("pbkv") == {}
    assert engine_options("vllm-offload") == {"cpu_write": "compute"}
    assert engine_options("hicache") == {"cpu_write": "compute", "cpu_spares_gpu_copies": True}


def test_vllm_offload_stores_on_compute_and_its_cpu_lru_drops_the_oldest_untouched() -> None:
    rig = Rig("vllm-offload", gpu=8, cpu=3)
    a, b = toks(1, 2), toks(2, 2)
    rig.run("a", a)
    # Both computed blocks are stored as the prefill computes them (prepare_store).
    assert rig.engine.cpu_cached() == H(a)
    assert rig.engine.stats().d2h_bytes == 8
    rig.run("b", b)  # b0 fills the tier; b1 drops a0, the LRU copy
    assert rig.engine.cpu_cached() == [H(a)[1], H(b)[0], H(b)[1]]
    # A lookup touches every held block of the prompt, last first: a GPU hit keeps its CPU
    # copy fresh (LRUCachePolicy.touch from get_num_new_matched_tokens).
    r = rig.run("a2", a)
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks) == (2, 0)
    # a1 is touched to the MRU end; a0, a GPU hit the tier lacks, is stored again (the
    # connector stores every block of the request): the LRU copy b0 goes for it.
    assert rig.engine.cpu_cached() == [H(b)[1], H(a)[1], H(a)[0]]
    assert rig.engine.stats().cpu_evictions == 2


def test_vllm_offload_loads_a_cpu_hit_after_the_gpu_prefix() -> None:
    rig = Rig("vllm-offload", gpu=3, cpu=4)
    a, b = toks(1, 2), toks(2, 1)
    rig.run("a", a)  # a0 a1 on the GPU and the CPU
    rig.run("b", b)  # needs 2 slots of the 1 free: LRU evicts a1 (a prompt's tail first)
    assert H(a)[1] not in rig.engine.gpu_cached()
    assert not [
        e
        for e in rig.events
        if isinstance(e, BlockStored) and e.tier is Tier.CPU and H(a)[1] in e.block_hashes
    ][1:]  # written once, at compute, not at eviction
    r = rig.run("a2", a)
    assert (r.gpu_hit_blocks, r.cpu_hit_blocks, r.computed_prompt_tokens) == (1, 1, 1)
    assert r.load_wait_s == pytest.approx(1.0)


def test_hicache_drops_only_copies_of_blocks_no_longer_on_the_gpu() -> None:
    rig = Rig("hicache", gpu=4, cpu=2)
    a, b = toks(1, 2), toks(2, 1)
    rig.run("a", a)  # write_through: a0, a1 backed up at once
    assert rig.engine.cpu_cached() == H(a)
    # b0 is written through; the host pool is full of copies of blocks still on the GPU
    # (evict_host skips them), so the write is dropped and counted.
    rig.run("b", b)  # fits without an eviction
    s = rig.engine.stats()
    assert rig.engine.cpu_cached() == H(a) and s.dropped_writebacks == 1
    c = toks(3, 1)
    rig.run("c", c)  # evicts a1 from the GPU (LRU); c0's write drops a1's copy, not a0's
    # (plain LRU, as vllm-offload, would drop a0, the least recently used)
    assert rig.engine.cpu_cached() == [H(a)[0], H(c)[0]]


def test_a_manager_running_a_baseline_plans_nothing_and_the_engine_matches_plans_none() -> None:
    outcomes = []
    for with_manager in (False, True):
        cfg = EngineConfig(
            gpu_blocks=3, cpu_blocks=4, tokens_per_block=4, **engine_options("vllm-offload")
        )
        if with_manager:
            manager = CacheManager(ManagerConfig(policy="vllm-offload"))
            engine = attach_manager(manager, cfg, COST)
        else:
            engine = SimEngine(cfg, COST)
        results = []
        for rid, t in (("a", toks(1, 2)), ("b", toks(2, 1)), ("a2", toks(1, 2))):
            engine.submit(SimRequest(rid, t, 1, "w", "a"))
            (r,) = engine.run()
            results.append((r.gpu_hit_blocks, r.cpu_hit_blocks, r.finish_s))
        outcomes.append((results, engine.cpu_cached()))
    assert outcomes[0] == outcomes[1]
