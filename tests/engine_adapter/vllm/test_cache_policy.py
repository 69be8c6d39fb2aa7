"""``PbkvCachePolicy`` against vLLM's ``CachePolicy`` interface (step by step, exact keys)."""

import pytest

from pbkv.cache_manager.events import CachePlan

pytestmark = pytest.mark.usefixtures("vllm_available")

H = [bytes([i]) * 32 for i in range(6)]


def key(i: int):
    from vllm.v1.kv_offload.base import make_offload_key

    return make_offload_key(H[i], 0)


@pytest.fixture
def policy():
    from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus

    from pbkv.engine_adapter.vllm.cache_policy import PbkvCachePolicy, set_plan_source

    p = PbkvCachePolicy(cache_capacity=6)
    for i in range(5):  # inserted in order: key(0) is the least recently used
        chunk = ChunkStatus(chunk_id=i)
        chunk.ref_cnt = 0  # stored and ready
        p.insert(key(i), chunk)
    yield p
    set_plan_source(None)


def evicted(result):
    return [k for k, _ in result]


def test_without_a_plan_it_is_vllm_lru(policy):
    assert evicted(policy.evict(2, set())) == [key(0), key(1)]


def test_plan_order_evict_first_then_lru(policy):
    from pbkv.engine_adapter.vllm.cache_policy import set_plan_source

    plan = CachePlan("e", 1, evict_first=(H[3], H[1]))
    set_plan_source(lambda: plan)
    # H3, H1 named first; then unnamed H0, H2 by LRU.
    assert evicted(policy.evict(4, set())) == [key(3), key(1), key(0), key(2)]
    assert list(policy.chunks) == [key(4)]


def test_protected_and_in_use_chunks_are_skipped(policy):
    from pbkv.engine_adapter.vllm.cache_policy import set_plan_source

    set_plan_source(lambda: CachePlan("e", 1, evict_first=(H[3], H[2])))
    policy.mark_non_evictable(key(2))
    policy.chunks[key(2)].ref_cnt = 1  # being loaded
    policy._evictable.discard(key(2))
    assert evicted(policy.evict(2, {key(3)})) == [key(0), key(1)]


def test_evict_is_atomic_when_n_cannot_be_met(policy):
    from pbkv.engine_adapter.vllm.cache_policy import set_plan_source

    set_plan_source(lambda: CachePlan("e", 1, evict_first=(H[0],)))
    assert policy.evict(5, {key(4)}) is None
    assert len(policy.chunks) == 5
    # still consistent afterwards: the LRU heap and the plan path agree
    set_plan_source(None)
    assert evicted(policy.evict(1, set())) == [key(0)]


def test_a_failing_plan_source_falls_back_to_lru_counted_and_logged(policy, caplog, monkeypatch):
    import logging

    from pbkv.engine_adapter.vllm import cache_policy
    from pbkv.throttled_log import ThrottledLog

    def broken():
        raise RuntimeError("service gone")

    monkeypatch.setattr(
        cache_policy,
        "_source_errors",
        ThrottledLog(logging.getLogger("pbkv.test"), "pbkv plan source of PbkvCachePolicy"),
    )
    cache_policy.set_plan_source(broken)
    assert evicted(policy.evict(1, set())) == [key(0)]
    assert evicted(policy.evict(1, set())) == [key(1)]
    assert cache_policy.plan_source_errors() == 2
    # One line at most a minute, however often it fails.
    assert [r.getMessage() for r in caplog.records] == [
        "pbkv plan source of PbkvCachePolicy failed in evict (RuntimeError: service gone); "
        "failing open"
    ]


def test_vllm_resolves_the_policy_by_module_path():
    from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

    from pbkv.engine_adapter.vllm.cache_policy import PbkvCachePolicy

    cls = CachePolicyFactory.get_cache_policy_cls(
        "PbkvCachePolicy", "pbkv.engine_adapter.vllm.cache_policy"
    )
    assert cls is PbkvCachePolicy
