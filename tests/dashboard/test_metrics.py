import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import STATS

from pbkv.dashboard.metrics import PbkvMetrics
from pbkv.dashboard.schema import StatsFormatError


def _samples(metrics: PbkvMetrics) -> dict[tuple[str, frozenset], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_stats_become_prometheus_samples():
    metrics = PbkvMetrics()
    metrics.update_from_stats(STATS)
    s = _samples(metrics)
    gpu, cpu = frozenset({("tier", "gpu")}), frozenset({("tier", "cpu")})
    assert s[("pbkv_cache_hit_blocks_total", gpu)] == 6
    assert s[("pbkv_cache_hit_blocks_total", cpu)] == 1
    assert s[("pbkv_cache_lookup_blocks_total", frozenset())] == 8
    assert s[("pbkv_cache_hit_rate", gpu)] == 0.75
    assert s[("pbkv_cache_hit_rate", cpu)] == 0.125  # 1 of all 8 lookups (2 GPU misses)
    assert s[("pbkv_engine_hit_rate", frozenset({("engine", "sim-0"), ("tier", "gpu")}))] == 0.75
    assert s[("pbkv_app_hit_rate", frozenset({("app", "chatdev"), ("tier", "gpu")}))] == 0.75
    agent = frozenset({("agent", 'Code "Reviewer"'), ("tier", "gpu")})
    assert s[("pbkv_agent_hit_rate", agent)] == 0.4  # label value escaped and round-tripped
    engine_cpu = frozenset({("engine", "sim-0"), ("tier", "cpu")})
    assert s[("pbkv_engine_lookup_blocks_total", frozenset({("engine", "sim-0")}))] == 8
    assert s[("pbkv_engine_hit_rate", engine_cpu)] == 0.0
    # an agent without lookups exports its counts but no rate
    idle = frozenset({("agent", "idle"), ("tier", "gpu")})
    assert s[("pbkv_agent_hit_blocks_total", idle)] == 0
    assert ("pbkv_agent_hit_rate", idle) not in s
    assert s[("pbkv_reused_tokens_total", frozenset())] == 96
    assert s[("pbkv_recomputed_tokens_total", frozenset())] == 32
    assert s[("pbkv_reused_token_ratio", frozenset())] == 0.75
    assert s[("pbkv_baseline_lru_reused_token_ratio", frozenset())] == 0.25
    assert s[("pbkv_prefetch_precision", frozenset())] == 0.75
    assert ("pbkv_prefetch_recall", frozenset()) not in s  # not measured: absent, not 0
    assert s[("pbkv_predictor_top1_accuracy", frozenset())] == 0.625
    assert s[("pbkv_predictor_calibration_error", frozenset({("metric", "brier")}))] == 0.125
    assert s[("pbkv_predictor_calibration_error", frozenset({("metric", "ece")}))] == 0.0625
    assert s[("pbkv_engine_plan_age_seconds", frozenset({("engine", "sim-0")}))] == 1.5
    assert s[("pbkv_engine_plan_age_seconds", frozenset({("engine", "sim-1")}))] == 42.0
    assert s[("pbkv_predictor_scored_steps", frozenset())] == 8
    assert s[("pbkv_predictor_errors_total", frozenset())] == 2
    assert s[("pbkv_prefetched_blocks_total", frozenset())] == 4
    assert s[("pbkv_prefetch_used_blocks_total", frozenset())] == 3
    assert s[("pbkv_prefetch_wasted_blocks_total", frozenset())] == 1
    assert s[("pbkv_cached_blocks", gpu)] == 10 and s[("pbkv_cached_blocks", cpu)] == 20
    assert s[("pbkv_directory_blocks", frozenset())] == 25
    assert s[("pbkv_plans_built_total", frozenset())] == 7
    assert s[("pbkv_fallback_lru", frozenset())] == 1
    assert s[("pbkv_active_workflows", frozenset())] == 3
    assert s[("pbkv_baseline_lru_cache_hit_rate", gpu)] == 0.25
    assert s[("pbkv_baseline_lru_reused_tokens_total", frozenset())] == 32
    assert s[("pbkv_baseline_lru_recomputed_tokens_total", frozenset())] == 96


def test_a_new_snapshot_replaces_labels_and_a_bad_one_keeps_the_old():
    metrics = PbkvMetrics()
    metrics.update_from_stats(STATS)
    metrics.update_from_stats({"hits": {"gpu_hits": 1, "gpu_lookups": 1}})
    s = _samples(metrics)
    assert not any(name.startswith("pbkv_agent_") for name, _ in s)  # agent gone with its wf
    assert ("pbkv_baseline_lru_cache_hit_rate", frozenset({("tier", "gpu")})) not in s
    with pytest.raises(StatsFormatError, match="stats.active_workflows"):
        metrics.update_from_stats({"active_workflows": -1})
    with pytest.raises(StatsFormatError, match=r"stats.plan_age_s_by_engine.e: expected secon"):
        metrics.update_from_stats({"plan_age_s_by_engine": {"e": -1}})
    with pytest.raises(StatsFormatError, match=r"stats.predictor_ece: expected a value in"):
        metrics.update_from_stats({"predictor_ece": 1.5})
    assert _samples(metrics) == s


def test_rpc_counts_and_latencies():
    metrics = PbkvMetrics()
    metrics.observe_rpc("StepFinished", "OK", 0.002)
    metrics.observe_rpc("StepFinished", "NOT_FOUND", 0.004)
    metrics.observe_rpc("GetStats", "OK", 0.0005)
    metrics.observe_rpc("Attach", "OK", 62.0)  # an engine's stream, observed when it ended
    metrics.observe_rpc("Attach", "CANCELLED", 30.0)
    s = _samples(metrics)
    ok = frozenset({("method", "StepFinished"), ("code", "OK")})
    assert s[("pbkv_rpc_requests_total", ok)] == 1
    step = frozenset({("method", "StepFinished")})
    assert s[("pbkv_rpc_latency_seconds_count", step)] == 2
    assert s[("pbkv_rpc_latency_seconds_bucket", step | {("le", "0.0025")})] == 1
    assert metrics.rpc_summary() == [
        {"method": "Attach", "kind": "stream", "requests": 2, "errors": 1, "mean_lifetime_s": 46.0},
        {"method": "GetStats", "kind": "unary", "requests": 1, "errors": 0, "mean_latency_ms": 0.5},
        {
            "method": "StepFinished",
            "kind": "unary",
            "requests": 2,
            "errors": 1,
            "mean_latency_ms": pytest.approx(3.0),
        },
    ]
    with pytest.raises(ValueError, match="latency_s must be >= 0"):
        metrics.observe_rpc("GetStats", "OK", -1.0)


def test_own_registry_per_instance_and_injected_registry():
    registry = CollectorRegistry()
    a, b = PbkvMetrics(registry), PbkvMetrics()  # two instances never collide
    a.observe_rpc("X", "OK", 0.1)
    assert registry.get_sample_value("pbkv_rpc_requests_total", {"method": "X", "code": "OK"}) == 1
    assert (
        b.registry.get_sample_value("pbkv_rpc_requests_total", {"method": "X", "code": "OK"})
        is None
    )
