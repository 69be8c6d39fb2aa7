"""The connector inside a real vLLM engine (tiny random-weight model, CPU backend).

One engine per module (start-up is the slow part). Its link is a ``StaticLink`` whose plan the
tests set by hand, so each test states exactly which blocks the "service" asked to keep or drop.
"""

from __future__ import annotations

import os

import pytest

from pbkv.cache_manager.events import BlockStored, CachePlan, RequestStarted, Tier
from pbkv.engine_adapter.block_hash import block_hashes

pytestmark = pytest.mark.slow

ENGINE_ID = "test-vllm"
BLOCK = 128
VOCAB = 4096


def prompt(seed: int, num_tokens: int) -> list[int]:
    return [(i * 7919 + seed * 104729) % (VOCAB - 16) + 16 for i in range(num_tokens)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vllm_available):
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    return str(make_tiny(tmp_path_factory.mktemp("tiny"), TinyModelConfig(vocab_size=VOCAB)))


@pytest.fixture(scope="module")
def engine(model_dir):
    from pbkv.bench.vllm_engine import LlmConfig, build_llm, connector_of
    from pbkv.engine_adapter.vllm import links
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig

    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0-1"
    static = links.StaticLink()
    links.IN_PROCESS_LINKS[ENGINE_ID] = static
    # 4 MiB of KV = 32 blocks of 128 tokens (1 KiB per token for the default tiny model).
    llm = build_llm(
        LlmConfig(
            model_dir,
            kv_cache_memory_bytes=4 * 2**20,
            max_model_len=2048,
            connector=ConnectorConfig(engine_id=ENGINE_ID, host_tier_blocks=8),
        )
    )
    yield llm, connector_of(llm), static
    del links.IN_PROCESS_LINKS[ENGINE_ID]
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture
def fresh(engine):
    llm, connector, static = engine
    static.plan, static.fail = None, False
    connector.reset_host_tier(8)
    generate(llm, [1, 2, 3])  # a step to flush the host-tier drops
    assert llm.reset_prefix_cache()
    static.events.clear()
    return engine


def generate(llm, tokens, tags=True, max_tokens=4):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from pbkv.engine_adapter.vllm.tags import make_extra_args

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        logprobs=3,
        ignore_eos=True,
        extra_args=make_extra_args("w1", "Coder") if tags else None,
    )
    out = llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    return out


def flood(llm, n=3):
    """Fill the 32-block cache with unrelated prompts (15 blocks each)."""
    for k in range(n):
        generate(llm, prompt(100 + k, 1900), tags=False)


def logprobs(out):
    return [{t: round(lp.logprob, 6) for t, lp in step.items()} for step in out.outputs[0].logprobs]


def test_block_events_carry_vllm_hashes_and_tags(fresh):
    llm, connector, static = fresh
    tokens = prompt(1, 600)
    generate(llm, tokens)
    stored = [e for e in static.events if isinstance(e, BlockStored) and e.tier is Tier.GPU]
    assert stored[0].parent_hash is None
    assert [h for e in stored for h in e.block_hashes] == block_hashes(tokens, BLOCK)
    started = [e for e in static.events if isinstance(e, RequestStarted)]
    assert (started[0].workflow_id, started[0].agent, started[0].num_gpu_hit_blocks) == (
        "w1",
        "Coder",
        0,
    )
    assert generate(llm, tokens).num_cached_tokens == 512
    started = [e for e in static.events if isinstance(e, RequestStarted)]
    assert started[1].num_gpu_hit_blocks == 4


def test_evict_first_drops_a_block_before_lru_order(fresh):
    llm, connector, static = fresh
    connector.reset_host_tier(0)
    old, new = prompt(3, 600), prompt(4, 600)
    generate(llm, old)
    generate(llm, new)  # LRU would evict `old` first
    static.plan = CachePlan(ENGINE_ID, seq=1, evict_first=tuple(block_hashes(new, BLOCK)))
    # 31 usable blocks; old and new cache 4 each. 15 never-used blocks go to this prompt ...
    generate(llm, prompt(5, 1900), tags=False)
    # ... 9 never-used remain, so these 11 blocks evict 2 cached ones: new's first two.
    generate(llm, prompt(6, 1280), tags=False)
    assert generate(llm, old).num_cached_tokens == 512
    assert generate(llm, new).num_cached_tokens == 0


def test_host_tier_reload_gives_the_same_logprobs_as_recompute(fresh):
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    llm, connector, static = fresh
    tokens = prompt(7, 600)
    recomputed = generate(llm, tokens)
    static.plan = CachePlan(ENGINE_ID, seq=1, offload=tuple(block_hashes(tokens, BLOCK)))
    generate(llm, prompt(8, 200), tags=False)  # one more step: the offload blocks are saved
    assert set(block_hashes(tokens, BLOCK)) <= set(connector.host.hashes())
    static.plan = None
    flood(llm)
    hits_before = connector.stats.host_hit_blocks
    reloaded = generate(llm, tokens)
    assert reloaded.num_cached_tokens == 512
    assert connector.stats.host_hit_blocks - hits_before == 4
    assert reloaded.outputs[0].token_ids == recomputed.outputs[0].token_ids
    assert logprobs(reloaded) == logprobs(recomputed)

    # Control: corrupt the host copy and the reloaded KV must change the logprobs.
    import torch

    worker = get_kv_transfer_group()
    with torch.inference_mode():
        for parts in worker.store.blocks.values():
            for part in parts:
                part.normal_()
    flood(llm)
    corrupted = generate(llm, tokens)
    assert corrupted.num_cached_tokens == 512
    assert logprobs(corrupted) != logprobs(recomputed)
    connector.reset_host_tier(8)


def test_request_less_prefetch_brings_host_blocks_back_before_the_request(fresh):
    from pbkv.bench.vllm_engine import block_pool_of
    from pbkv.engine_adapter.vllm.plan_order import cached_block

    llm, connector, static = fresh
    tokens = prompt(14, 600)
    hashes = tuple(block_hashes(tokens, BLOCK))
    recomputed = generate(llm, tokens)
    # The same split as the request below (512 tokens from cache, 88 computed): vLLM's CPU
    # attention over a cached prefix differs from one full prefill by ~5e-5 in logprobs, so
    # exact equality is asserted against this GPU-hit reference, not the full prefill.
    reference = generate(llm, tokens)
    assert reference.num_cached_tokens == 512
    static.plan = CachePlan(ENGINE_ID, seq=1, offload=hashes)
    generate(llm, prompt(15, 200), tags=False)  # the offload blocks are saved to the host tier
    static.plan = None
    flood(llm)
    pool = block_pool_of(llm)
    assert all(cached_block(pool, h) is None for h in hashes)
    static.plan = CachePlan(ENGINE_ID, seq=2, prefetch=hashes)
    before = connector.stats.prefetched_blocks
    generate(llm, prompt(16, 100), tags=False)  # any step: the prefetch rides along
    assert connector.stats.prefetched_blocks - before == 4
    assert all(cached_block(pool, h) is not None for h in hashes)
    static.plan = None
    hits_before = connector.stats.host_hit_blocks
    again = generate(llm, tokens)
    assert again.num_cached_tokens == 512
    assert connector.stats.host_hit_blocks == hits_before  # GPU hits, not on-demand loads
    assert again.outputs[0].token_ids == recomputed.outputs[0].token_ids
    assert logprobs(again) == logprobs(reference)


def test_anonymous_requests_are_served_and_cached_by_lru(fresh):
    llm, connector, static = fresh
    tokens = prompt(9, 600)
    before = connector.stats.requests_anonymous
    generate(llm, tokens, tags=False)
    assert generate(llm, tokens, tags=False).num_cached_tokens == 512
    assert connector.stats.requests_anonymous - before == 2
    started = [e for e in static.events if isinstance(e, RequestStarted)]
    assert [(e.workflow_id, e.agent) for e in started] == [(None, None), (None, None)]


def test_plans_naming_missing_blocks_are_ignored(fresh):
    llm, connector, static = fresh
    tokens = prompt(10, 600)
    reference = generate(llm, tokens)
    ghosts = tuple(bytes([i]) * 32 for i in range(5))
    static.plan = CachePlan(ENGINE_ID, seq=1, evict_first=ghosts, offload=ghosts, prefetch=ghosts)
    missing_before = connector.stats.missing_plan_blocks
    again = generate(llm, tokens)
    assert again.outputs[0].token_ids == reference.outputs[0].token_ids
    assert again.num_cached_tokens == 512
    assert connector.stats.missing_plan_blocks > missing_before


def test_a_dead_link_falls_back_to_lru_and_keeps_serving(fresh):
    llm, connector, static = fresh
    connector.reset_host_tier(0)
    static.fail = True  # the service is gone: no plan, events dropped
    old, new = prompt(11, 600), prompt(17, 600)
    generate(llm, old)
    generate(llm, new)
    static.plan = CachePlan(ENGINE_ID, seq=1, evict_first=tuple(block_hashes(new, BLOCK)))
    # As in test_evict_first_drops_a_block_before_lru_order: these evict 2 cached blocks,
    # by plain LRU old's (the plan would take new's).
    generate(llm, prompt(18, 1900), tags=False)
    generate(llm, prompt(19, 1280), tags=False)
    out = generate(llm, new)
    assert out.num_cached_tokens == 512  # the unreachable plan is not honoured
    assert len(out.outputs[0].token_ids) == 4
    assert static.events == []


def test_latest_plan_wins(fresh):
    llm, connector, static = fresh
    connector.reset_host_tier(0)
    a, b = prompt(12, 600), prompt(13, 600)
    generate(llm, a)
    generate(llm, b)  # LRU would evict `a` first
    for seq in range(1, 200):  # a flood of plans between two steps: only the last counts
        drop = b if seq % 2 else a
        static.plan = CachePlan(ENGINE_ID, seq=seq, evict_first=tuple(block_hashes(drop, BLOCK)))
    # The last plan (seq 199, odd) evicts `b` first; these evict 2 cached blocks (as in
    # test_evict_first_drops_a_block_before_lru_order).
    generate(llm, prompt(31, 1900), tags=False)
    generate(llm, prompt(32, 1280), tags=False)
    assert generate(llm, a).num_cached_tokens == 512
    assert generate(llm, b).num_cached_tokens == 0


def test_unranked_blocks_are_written_through_while_the_host_tier_has_room(fresh):
    llm, connector, static = fresh
    static.plan = CachePlan(ENGINE_ID, seq=1)  # a plan that ranks nothing yet
    tokens = prompt(20, 600)
    hashes = block_hashes(tokens, BLOCK)
    generate(llm, tokens)
    generate(llm, prompt(21, 100))  # a later step copies them (never the computing one)
    assert all(h in connector.host for h in hashes)
    flood(llm)  # 45 unranked blocks more than the 8-block tier holds
    assert all(h in connector.host for h in hashes)  # unranked blocks never displace
    assert len(connector.host) == 8


def test_a_prefix_cache_reset_is_reported_as_removals(fresh, monkeypatch):
    from pbkv.cache_manager.events import BlockRemoved

    llm, connector, static = fresh
    # Pretend a step allocates one block: with never-used blocks heading the free queue the
    # reporter then skips looking for evictions, and only the reset itself can tell it.
    monkeypatch.setattr(connector.reporter, "step_blocks", 1)
    tokens = prompt(22, 600)
    hashes = set(block_hashes(tokens, BLOCK))
    generate(llm, tokens)
    generate(llm, [5, 6, 7])  # a step with nothing to evict: eviction checks may be skipped
    assert llm.reset_prefix_cache()
    static.events.clear()
    generate(llm, [8, 9, 10])
    removed = {h for e in static.events if isinstance(e, BlockRemoved) for h in e.block_hashes}
    assert hashes <= removed
