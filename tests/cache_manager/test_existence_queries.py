"""The manager's answers to which workflows and engines exist (the service asks them)."""

from __future__ import annotations

from pbkv.cache_manager.manager import CacheManager, ManagerConfig


def test_workflow_and_engine_queries_follow_the_lifecycle() -> None:
    m = CacheManager(ManagerConfig(policy="lru", ended_memory=2))
    assert (m.has_workflow("w1"), m.has_ended("w1"), m.active_count()) == (False, False, 0)
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    assert (m.has_workflow("w1"), m.active_count()) == (True, 2)
    m.end_workflow("w1")
    assert (m.has_workflow("w1"), m.has_ended("w1"), m.active_count()) == (False, True, 1)
    m.remember_ended(["old-a", "old-b"])  # a restarted service restores ended ids
    assert [m.has_ended(w) for w in ("w1", "old-a", "old-b")] == [False, True, True]
    assert (m.engine_ids(), m.has_engine("e0")) == ((), False)
    m.attach_engine("e1", gpu_blocks=4, cpu_blocks=0, tokens_per_block=16)
    m.attach_engine("e0", gpu_blocks=4, cpu_blocks=0, tokens_per_block=16)
    assert (m.engine_ids(), m.has_engine("e0")) == (("e1", "e0"), True)
    m.detach_engine("e1")
    assert m.engine_ids() == ("e0",)
