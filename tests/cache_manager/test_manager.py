from __future__ import annotations

import pytest
from cm_helpers import ENGINE, Harness
from support import ScriptedPredictor

from pbkv.cache_manager.accuracy import AccuracyConfig
from pbkv.cache_manager.errors import (
    CacheManagerError,
    DuplicateWorkflow,
    EndedWorkflow,
    OutOfOrderStep,
    UnknownEngine,
    UnknownWorkflow,
)
from pbkv.cache_manager.events import BlockStored, RequestStarted
from pbkv.cache_manager.kvflow import KvflowPolicyConfig
from pbkv.cache_manager.manager import CacheManager, ManagerConfig
from pbkv.cache_manager.oracle import OracleConfig
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.cache_manager.policies import POLICIES, PbkvPolicy, PbkvPolicyConfig
from pbkv.predictor.forecast import AgentForecast, ObservedStep
from pbkv.registry import UnknownNameError


def test_lru_plans_name_nothing_and_are_reused() -> None:
    h = Harness.make("lru")
    m = h.manager
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    h.tick(1.0)
    h.run("w1", "A", (b"s0", b"s1", b"w1a"))
    first = h.plan()
    # LRU: the plan names no block; the engine orders them by last access.
    assert (first.evict_first, first.offload, first.prefetch) == ((), (), ())
    assert not first.fallback_lru and first.seq == 1
    # Nothing a plan says changed: the very same object comes back (cheap for engines).
    h.tick(2.0)
    h.run("w1", "A", (b"s0", b"s1", b"w1b"), gpu_hits=2)
    assert h.plan() is first
    assert h.order() == [b"w1a", b"s0", b"s1", b"w1b"]


def test_hit_and_token_stats() -> None:
    h = Harness.make("lru")
    m = h.manager
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    h.run("w1", "A", (b"a", b"b"))
    h.run("w1", "A", (b"a", b"b", b"c", b"d"), gpu_hits=2)
    h.run(None, None, (b"a", b"x"), gpu_hits=1)
    s = m.stats()
    assert (s.hits.gpu_hits, s.hits.gpu_lookups, s.hits.cpu_lookups) == (3, 8, 5)
    assert s.hits_by_agent["A"].gpu_hit_rate == pytest.approx(2 / 6)
    assert s.hits_by_agent["(untagged)"].gpu_hits == 1
    assert s.hits_by_app["app"].gpu_lookups == 6
    assert s.hits_by_engine[ENGINE].gpu_hits == 3
    assert (s.reused_tokens, s.recomputed_tokens) == (12, 20)
    assert (s.gpu_blocks_cached, s.directory_blocks, s.active_workflows) == (5, 5, 1)
    d = s.to_dict()
    assert d["hits"]["gpu_hits"] == 3 and d["engines"] == [ENGINE]


def test_orchestrator_errors_name_the_field() -> None:
    m = CacheManager(ManagerConfig(policy="lru"), clock=lambda: 0.0)
    with pytest.raises(UnknownWorkflow, match="'nope'"):
        m.step_started("nope", "A")
    m.start_workflow("w1", "app")
    with pytest.raises(DuplicateWorkflow, match="w1"):
        m.start_workflow("w1", "app")
    with pytest.raises(CacheManagerError, match="app"):
        m.start_workflow("w2", "")
    with pytest.raises(OutOfOrderStep, match="'B'"):
        m.step_finished("w1", ObservedStep("B"))
    m.step_started("w1", "A")
    assert m.step_finished("w1", ObservedStep("A")) is None  # no predictor: no forecast
    assert m.workflow_state("w1").steps == (ObservedStep("A"),)
    assert [s.workflow_id for s in m.active_workflows()] == ["w1"]
    m.end_workflow("w1")
    with pytest.raises(EndedWorkflow, match="w1"):
        m.step_started("w1", "A")
    with pytest.raises(DuplicateWorkflow):
        m.start_workflow("w1", "app")
    assert m.active_workflows() == []


def test_engine_errors() -> None:
    m = CacheManager(ManagerConfig(policy="lru"), clock=lambda: 0.0)
    with pytest.raises(UnknownEngine, match="'ghost'"):
        m.on_engine_event(BlockStored("ghost", (b"a",), None, 4))
    with pytest.raises(UnknownEngine):
        m.plan("ghost")
    with pytest.raises(CacheManagerError, match="gpu_blocks"):
        m.attach_engine("e", gpu_blocks=0, cpu_blocks=0, tokens_per_block=4)
    m.attach_engine("e", gpu_blocks=2, cpu_blocks=0, tokens_per_block=4)
    with pytest.raises(CacheManagerError, match="already attached"):
        m.attach_engine("e", gpu_blocks=2, cpu_blocks=0, tokens_per_block=4)
    with pytest.raises(CacheManagerError, match="tokens_per_block 8"):
        m.on_engine_event(BlockStored("e", (b"a",), None, 8))
    with pytest.raises(CacheManagerError, match="exceeds its 1 blocks"):
        m.on_engine_event(RequestStarted("e", "r", (b"a",), 4, num_gpu_hit_blocks=2))
    m.check_integrity()
    m.detach_engine("e")
    with pytest.raises(UnknownEngine):
        m.detach_engine("e")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ManagerConfig(horizon=0), "ManagerConfig.horizon must be an int >= 1, got 0"),
        (
            lambda: PbkvPolicyConfig(min_prefetch_p=1.5),
            "PbkvPolicyConfig.min_prefetch_p must be a number in [0, 1], got 1.5",
        ),
        (
            lambda: AccuracyConfig(recover_at=0.1),
            "AccuracyConfig.recover_at (0.1) must be >= fallback_below (0.3)",
        ),
        (
            lambda: PlannerConfig(plan_max_blocks=-1),
            "PlannerConfig.plan_max_blocks must be an int >= 0, got -1",
        ),
        (
            lambda: ManagerConfig(planner={"plan_max_blocks": 1}),
            "ManagerConfig.planner must be a PlannerConfig, got {'plan_max_blocks': 1}",
        ),
    ],
)
def test_config_is_validated(make, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_min_offload_p_has_one_default_the_policy_uses() -> None:
    m = CacheManager(ManagerConfig(policy="pbkv"))
    assert m.policy.min_offload_p == PbkvPolicyConfig().min_offload_p == 0.7
    assert PbkvPolicy(horizon=4).min_offload_p == 0.7


def test_each_policy_gets_only_its_own_section() -> None:
    kv = KvflowPolicyConfig(hold_step=7)
    m = CacheManager(ManagerConfig(policy="kvflow", kvflow=kv, oracle=OracleConfig(load_ahead=5)))
    assert (m.policy.hold_step, m.policy.load_ahead_step) == (7, 2)
    o = CacheManager(ManagerConfig(policy="oracle", oracle=OracleConfig(offload_steps=2.5)))
    assert (o.policy.load_ahead, o.policy.offload_steps) == (1, 2.5)
    assert ManagerConfig(policy="lru").policy_config is None


def test_unknown_policy_lists_the_known() -> None:
    with pytest.raises(
        UnknownNameError,
        match=", ".join(sorted(POLICIES.names())),
    ):
        ManagerConfig(policy="belady")


def test_forecasts_come_from_the_predictor_and_hot_reload() -> None:
    p1 = ScriptedPredictor()
    p1.script[("w1", 1)] = ({"B": (0.9, 0.95, 1.0)}, 0.8)
    h = Harness.make("pbkv", predictor=p1, horizon=2)
    m = h.manager
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    fc = m.step_finished("w1", ObservedStep("A"))
    assert fc is not None and fc.get("B").p_within == (0.9, 0.95)
    assert m.forecast("w1") is fc
    p2 = ScriptedPredictor()
    p2.script[("w1", 1)] = ({"C": (0.7, 0.8, 1.0)}, 0.5)
    m.set_predictor(p2)
    assert m.forecast("w1").get("C") is not None and p2.calls == 1


class _BadPredictor(ScriptedPredictor):
    """Returns a forecast with a NaN probability (bypassing ``Forecast``'s own check)."""

    def forecast(self, state, horizon=2):
        fc = super().forecast(state, horizon)
        bad = AgentForecast("A", (float("nan"), 0.5), None)
        object.__setattr__(fc, "agents", (bad,))
        return fc


class _RaisingPredictor(ScriptedPredictor):
    def forecast(self, state, horizon=2):
        raise RuntimeError("model exploded")


def test_bad_forecasts_are_dropped_counted_and_logged(caplog) -> None:
    logged = (
        "pbkv predictor failed in forecast (invalid forecast for workflow 'w1'); failing open",
        "pbkv predictor failed in forecast (RuntimeError: model exploded); failing open",
    )
    for predictor, line in zip((_BadPredictor(), _RaisingPredictor()), logged, strict=True):
        h = Harness.make("pbkv", predictor=predictor, horizon=2)
        m = h.manager
        m.start_workflow("w1", "app")
        m.step_started("w1", "A")
        h.run("w1", "A", (b"a",))
        # Safe outcome: no forecast (recency only), the error is counted, nothing raises.
        caplog.clear()
        assert m.step_finished("w1", ObservedStep("A")) is None
        assert m.stats().predictor_errors == 1
        assert [r.getMessage() for r in caplog.records] == [line]
        assert h.order() == [b"a"]


def test_plan_names_at_most_plan_max_blocks() -> None:
    h = Harness.make("pbkv", gpu=16, cpu=0, planner=PlannerConfig(plan_max_blocks=4))
    h.tick(1)
    h.run(None, None, tuple(f"c{i:02d}".encode() for i in range(10)))
    plan = h.plan()
    # The 4 least valuable (the chain's deepest blocks) are named, in value order; the rest
    # (more valuable) fall to the engine's LRU after them.
    assert list(plan.evict_first) == [b"c09", b"c08", b"c07", b"c06"]


def test_ended_workflows_leave_no_per_workflow_state_without_an_engine() -> None:
    # A service with no engine attached never calls plan(); ended workflows must not pile up
    # in the manager's dirty set (a memory leak found in the service soak).
    manager = CacheManager(ManagerConfig(policy="pbkv"), ScriptedPredictor())
    for i in range(200):
        wid = f"w{i}"
        manager.start_workflow(wid, "app", now_s=float(i))
        manager.step_started(wid, "a", now_s=float(i))
        manager.step_finished(wid, ObservedStep("a", end_s=float(i)))
        manager.end_workflow(wid, now_s=float(i))
    assert manager._dirty_workflows == set()
    assert manager.active_workflows() == []
