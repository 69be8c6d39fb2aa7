"""Random request streams and random (even nonsensical) plans never break the engine's
invariants: ref counts match running requests, capacities hold, every request finishes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pbkv.cache_manager.events import BlockRemoved, BlockStored, CachePlan, Tier
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine, SimRequest

COST = CostModel(
    prefill_s_per_token=1e-3,
    prefill_s_per_token_ctx=1e-6,
    decode_s_per_step=1e-3,
    decode_s_per_seq=1e-4,
    decode_s_per_ctx_token=1e-7,
    iteration_overhead_s=1e-4,
    kv_bytes_per_token=1,
    h2d_bytes_per_s=40.0,
    d2h_bytes_per_s=40.0,
)

request = st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 12), st.integers(0, 6))
plan_pick = st.tuples(
    st.lists(st.integers(0, 200), max_size=6),
    st.lists(st.integers(0, 200), max_size=6),
    st.lists(st.integers(0, 200), max_size=6),
    st.lists(st.integers(0, 200), max_size=6),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(request, plan_pick), min_size=1, max_size=25),
    st.integers(8, 24),
    st.integers(0, 12),
)
def test_invariants_hold(stream, gpu_blocks, cpu_blocks) -> None:
    events: list = []
    plan: list[CachePlan | None] = [None]
    engine = SimEngine(
        EngineConfig(
            gpu_blocks=gpu_blocks, cpu_blocks=cpu_blocks, tokens_per_block=4, transfer_window_s=0.01
        ),
        COST,
        sink=events.append,
        plans=lambda _id: plan[0],
    )
    submitted = 0
    finished = 0
    for i, ((prefix, variant, new_tokens, out), picks) in enumerate(stream):
        # Prompts share prefixes: a common system part per ``prefix``, then a variant part.
        tokens = [100 + prefix] * 8 + [500 + variant] * 8 + [1000 + i] * new_tokens
        if -(-(len(tokens) + out) // 4) > gpu_blocks:
            continue
        engine.submit(SimRequest(f"r{i}", tuple(tokens), out))
        submitted += 1
        known = engine.gpu_cached() + engine.cpu_cached()
        if known:
            pick = [[known[j % len(known)] for j in js] for js in picks[:4]]
            plan[0] = CachePlan(
                "sim0",
                i,
                evict_first=tuple(pick[0] + pick[1]),
                offload=tuple(pick[2]),
                prefetch=tuple(pick[3]),
                fallback_lru=picks[4] and i % 3 == 0,
            )
        finished += len(engine.run(until_s=engine.now_s + 0.01))
        engine.check_integrity()
    for _ in range(10_000):
        if engine.idle:
            break
        finished += len(engine.run())
        engine.check_integrity()
    assert finished == submitted
    # The events replay to exactly the engine's tiers.
    tiers: dict[Tier, set[bytes]] = {Tier.GPU: set(), Tier.CPU: set()}
    for e in events:
        if isinstance(e, BlockStored):
            assert not tiers[e.tier] & set(e.block_hashes)
            tiers[e.tier] |= set(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            assert set(e.block_hashes) <= tiers[e.tier]
            tiers[e.tier] -= set(e.block_hashes)
    assert tiers[Tier.GPU] == set(engine.gpu_cached())
    assert tiers[Tier.CPU] == set(engine.cpu_cached())
