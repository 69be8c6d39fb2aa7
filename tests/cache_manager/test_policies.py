"""Policy ranks for one block, exact values: what a full CPU tier changes."""

from __future__ import annotations

import math

from cm_helpers import Harness
from support import ScriptedPredictor

from pbkv.cache_manager.block_directory import Block
from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.oracle import ClairvoyantPolicy, OracleConfig
from pbkv.cache_manager.policies import BlockFacts, PbkvPolicy, PbkvPolicyConfig
from pbkv.cache_manager.scorer import Outlook, ScorerConfig
from pbkv.predictor.forecast import ObservedStep


def _block(*, cpu: bool) -> Block:
    b = Block(b"x", None, 2)
    b.gpu_copies = 1
    b.cpu_copies = int(cpu)
    b.last_access_s = 0.0
    return b


def _facts(outlooks: list[Outlook], *, cpu: bool, cpu_full: bool) -> BlockFacts:
    return BlockFacts(_block(cpu=cpu), 32, 16, 64, outlooks, False, 0.0, 1, cpu_full)


def test_pbkv_values_a_cpu_copy_as_a_reload_only_while_the_cpu_tier_has_room() -> None:
    policy = PbkvPolicy(
        PbkvPolicyConfig(min_offload_p=0.3, scorer=ScorerConfig(value_model="survival")),
        horizon=2,
    )
    scorer = policy.scorer
    o = [Outlook(0.8, 1.0, 1.0)]
    urgency = 1.0 + scorer.config.eta_weight * 1.0
    # Room on the CPU: the copy survives, losing the GPU copy costs one reload.
    r = policy.rank(_facts(o, cpu=True, cpu_full=False))
    assert math.isclose(r.value, 0.8 * scorer.reload_ms(16) / urgency)
    # CPU full: its LRU may drop the copy first, so the GPU copy is worth what recomputing
    # it costs, as if there were no copy: its share (16 of 64 tokens) of recomputing the
    # prompt through it (tokens 0..64).
    r = policy.rank(_facts(o, cpu=True, cpu_full=True))
    assert math.isclose(r.value, 0.8 * scorer.recompute_ms(0, 64) * 16 / 64 / urgency)
    assert r.value == policy.rank(_facts(o, cpu=False, cpu_full=True)).value


def test_pbkv_prefix_values_a_block_at_the_recompute_of_the_prompt_behind_it() -> None:
    config = PbkvPolicyConfig(min_offload_p=0.3, scorer=ScorerConfig(value_model="survival"))
    prefix = PbkvPolicy(
        PbkvPolicyConfig(min_offload_p=0.3, scorer=ScorerConfig(value_model="prefix")),
        horizon=2,
    )
    survival = PbkvPolicy(config, horizon=2)
    o = [Outlook(0.8, 1.0, 1.0)]
    urgency = 1.0 + prefix.scorer.config.eta_weight * 1.0
    # The former value: this block and the prompt behind it (tokens 32..64).
    r = prefix.rank(_facts(o, cpu=False, cpu_full=True))
    assert math.isclose(r.value, 0.8 * prefix.scorer.recompute_ms(32, 64) / urgency)
    # The survival value prices the block at its share: less than the tail it heads.
    assert survival.rank(_facts(o, cpu=False, cpu_full=True)).value < r.value
    # A block several consumers share is priced as "prefix" prices it in both models: it and
    # the prompt behind it (workflows yet to start reuse it too).
    shared = BlockFacts(_block(cpu=False), 32, 16, 64, o, False, 0.0, 2, True)
    assert math.isclose(survival.rank(shared).value, r.value)
    # With a CPU copy both are one reload.
    assert math.isclose(
        prefix.rank(_facts(o, cpu=True, cpu_full=False)).value,
        survival.rank(_facts(o, cpu=True, cpu_full=False)).value,
    )


def test_pbkv_offloads_unlikely_blocks_only_while_the_cpu_tier_has_room() -> None:
    policy = PbkvPolicy(PbkvPolicyConfig(min_offload_p=0.3), horizon=2)
    unlikely, likely = [Outlook(0.2, 1.0, 1.0)], [Outlook(0.3, 1.0, 1.0)]
    assert policy.rank(_facts(unlikely, cpu=False, cpu_full=False)).offload
    assert not policy.rank(_facts(unlikely, cpu=False, cpu_full=True)).offload
    assert policy.rank(_facts(likely, cpu=False, cpu_full=True)).offload


def test_oracle_offloads_far_uses_only_while_the_cpu_tier_has_room() -> None:
    policy = ClairvoyantPolicy(OracleConfig(offload_steps=4))
    near, far = [Outlook(1.0, 4.0, 1.0)], [Outlook(1.0, 5.0, 1.0)]
    assert policy.rank(_facts(far, cpu=False, cpu_full=False)).offload
    assert not policy.rank(_facts(far, cpu=False, cpu_full=True)).offload
    assert policy.rank(_facts(near, cpu=False, cpu_full=True)).offload


def test_manager_tells_policies_when_the_cpu_tier_is_full() -> None:
    p = ScriptedPredictor()
    p.script[("w1", 2)] = ({"A": (0.9, 0.95, 1.0), "B": (0.05, 0.1, None)}, 0.9)
    h = Harness.make("pbkv", predictor=p, horizon=2, gpu=8, cpu=1)
    m = h.manager
    m.start_workflow("w1", "app")
    # w1 runs B (b0, b1), then A (a0); afterwards A is likely next, B is not.
    h.tick(1)
    m.step_started("w1", "B")
    h.run("w1", "B", (b"b0", b"b1"))
    m.step_finished("w1", ObservedStep("B"))
    h.tick(2)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a0",))
    m.step_finished("w1", ObservedStep("A"))
    # The CPU tier has room: every GPU block may get a copy, least valuable first.
    plan = h.plan()
    assert list(plan.offload) == [b"b1", b"b0", b"a0"]
    # a0 gets its copy and fills the CPU tier: B's blocks (conservative P(reuse) < 0.7) are
    # no longer worth a copy that would push out a likelier one.
    h.store((b"a0",), None, Tier.CPU)
    assert list(h.plan().offload) == []


def test_cpu_tier_fullness_has_hysteresis() -> None:
    h = Harness.make("pbkv", gpu=4, cpu=10)
    eng = h.manager._engines["e0"]
    hashes = tuple(f"c{i}".encode() for i in range(10))
    # Nine CPU blocks: room left.
    h.store(hashes[:9], None, Tier.CPU)
    h.plan()
    assert not eng.cpu_full
    # The tenth fills the tier.
    h.store(hashes[9:], hashes[8], Tier.CPU)
    h.plan()
    assert eng.cpu_full
    # One dropped (9 of 10, the engine's LRU about to write another): still full.
    h.evict(hashes[9], tier=Tier.CPU)
    h.plan()
    assert eng.cpu_full
    # Below 90%: room again.
    h.evict(hashes[8], tier=Tier.CPU)
    h.plan()
    assert not eng.cpu_full
