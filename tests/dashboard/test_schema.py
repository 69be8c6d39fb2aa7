import pytest

from pbkv.cache_manager.scorer import BlockScore
from pbkv.cache_manager.stats import block_score_dict
from pbkv.dashboard.schema import ScopeCounts, StatsFormatError, parse_stats


def test_parses_the_manager_stats_shape():
    stats = parse_stats(
        {
            "policy": "pbkv",
            "hits": {
                "gpu_hits": 5,
                "gpu_lookups": 8,
                "cpu_hits": 2,
                "cpu_lookups": 3,
                "gpu_hit_rate": 0.625,
                "cpu_hit_rate": 0.667,
            },
            "hits_by_agent": {"b": {"gpu_lookups": 2, "cpu_hits": 1, "cpu_lookups": 2}, "a": {}},
            "reused_tokens": 30,
            "recomputed_tokens": 10,
            "prefetched_blocks": 4,
            "prefetch_used_blocks": 2,
            "prefetch_wasted_blocks": 1,
            "prefetch_precision": 0.5,
            "prefetch_recall": None,
            "predictor_top1_accuracy": 1,
            "predictor_brier": 0.25,
            "predictor_samples": 8,
            "predictor_errors": 1,
            "gpu_blocks_cached": 7,
            "cpu_blocks_cached": 9,
            "directory_blocks": 12,
            "plans_built": 5,
            "fallback_lru": True,
            "active_workflows": 2,
            "engines": ["sim-0"],
            "top_kept": [
                {
                    "block_hash": b"\x0a\xff",
                    "score": 2,
                    "p_reuse": 0.5,
                    "eta_steps": None,
                    "recompute_cost_ms": 3.5,
                    "reload_cost_ms": 1,
                    "consumers": 4,
                }
            ],
            "baseline_lru": {"hits": {"gpu_hits": 1, "gpu_lookups": 4}},
            "service": {
                "store": "sqlite",
                "events_recorded": 10,
                "engines": ["sim-0", "sim-1"],
                "nested": {"dropped": 1},
            },
        }
    )
    assert stats.overall == ScopeCounts(lookup_blocks=8, gpu_hit_blocks=5, cpu_hit_blocks=2)
    assert stats.overall.hit_rate("gpu") == 0.625
    # over all lookups (as the engine and the bench report it), not over the GPU misses
    assert stats.overall.hit_rate("cpu") == 0.25
    assert [name for name, _ in stats.per_agent] == ["a", "b"]  # sorted
    assert stats.per_agent[0][1].hit_rate("gpu") is None  # no lookups: unknown, not 0
    assert stats.per_agent[1][1] == ScopeCounts(2, 0, 1)
    assert stats.reused_fraction == 0.75
    assert (stats.prefetched_blocks, stats.prefetch_used_blocks, stats.prefetch_wasted_blocks) == (
        4,
        2,
        1,
    )
    assert (stats.prefetch_precision, stats.prefetch_recall) == (0.5, None)
    assert (
        stats.top1_accuracy,
        stats.calibration,
        stats.calibration_metric,
        stats.scored_steps,
        stats.predictor_errors,
    ) == (1.0, 0.25, "brier", 8, 1)
    assert (
        stats.gpu_blocks_cached,
        stats.cpu_blocks_cached,
        stats.directory_blocks,
        stats.plans_built,
    ) == (7, 9, 12, 5)
    assert stats.fallback_lru is True and stats.active_workflows == 2
    assert stats.top_kept == (
        {
            "block_hash": "0aff",
            "score": 2.0,
            "p_reuse": 0.5,
            "eta_steps": None,
            "recompute_cost_ms": 3.5,
            "reload_cost_ms": 1.0,
            "consumers": 4,
        },
    )
    assert stats.baseline_lru is not None and stats.baseline_lru.overall.hit_rate("gpu") == 0.25
    assert stats.service == (
        ("engines", "sim-0, sim-1"),
        ("events_recorded", 10),
        ("store", "sqlite"),
    )  # nested objects are not shown


def test_top_kept_is_the_managers_dict_form_as_it_is():
    scores = (
        BlockScore(b"\x0a\xff", 2.5, 0.5, None, 3.5, 1.0, 4),
        BlockScore(b"\x01", 1.25, 0.25, 2.0, 0.5, 0.125, 1),
    )
    raw = [block_score_dict(s) for s in scores]
    assert raw[0] == {
        "block_hash": "0aff",
        "score": 2.5,
        "p_reuse": 0.5,
        "eta_steps": None,
        "recompute_cost_ms": 3.5,
        "reload_cost_ms": 1.0,
        "consumers": 4,
    }
    assert parse_stats({"top_kept": raw}).top_kept == tuple(raw)


def test_empty_dict_is_an_idle_service():
    stats = parse_stats({})
    assert stats.overall.hit_rate("gpu") is None and stats.reused_fraction is None
    assert stats.baseline_lru is None and stats.top_kept == () and stats.service == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hits": {"gpu_hits": "3"}}, "stats.hits.gpu_hits: expected a count"),
        (
            {"hits": {"gpu_hits": 3, "cpu_hits": 2, "gpu_lookups": 4}},
            "stats.hits: gpu_hits 3 \\+ cpu_hits 2 > gpu_lookups 4",
        ),
        (
            {"hits_by_app": {"x": {"gpu_lookups": -1}}},
            "stats.hits_by_app.x.gpu_lookups: expected a count",
        ),
        ({"prefetch_recall": 1.5}, r"stats.prefetch_recall: expected a value in \[0, 1\]"),
        ({"predictor_top1_accuracy": float("nan")}, "stats.predictor_top1_accuracy"),
        ({"fallback_lru": 1}, "stats.fallback_lru: expected true/false"),
        ({"plans_built": True}, "stats.plans_built: expected a count"),
        ({"top_kept": [{"block_hash": "ab", "score": None}]}, r"stats.top_kept\[0\].score"),
        ({"baseline_lru": {"reused_tokens": 1.5}}, "stats.baseline_lru.reused_tokens"),
        ({"service": ["x"]}, "stats.service: expected an object"),
        ([], "stats: expected an object"),
    ],
)
def test_bad_fields_are_named(raw, message):
    with pytest.raises(StatsFormatError, match=message):
        parse_stats(raw)


def test_cluster_view_sums_replicas_and_rates_each() -> None:
    from pbkv.dashboard.view import build_view

    stats = parse_stats(
        {
            "cluster": {
                "replica": "a",
                "replicas": [
                    {"replica": "a", "gpu_lookups": 100, "gpu_hits": 30, "cpu_hits": 10},
                    {"replica": "b", "gpu_lookups": 300, "gpu_hits": 60, "cpu_hits": 0},
                    {"replica": "c", "gpu_lookups": 0, "gpu_hits": 0, "cpu_hits": 0},
                ],
            }
        }
    )
    view = build_view(stats, history={}, rpc=[], generated_s=0.0)["cluster"]
    assert [(r["replica"], r["hit_rate"]) for r in view["replicas"]] == [
        ("a", 0.4),
        ("b", 0.2),
        ("c", None),  # no lookups yet: no rate, not 0
    ]
    assert view["total"] == {"gpu_lookups": 400, "gpu_hits": 90, "cpu_hits": 10, "hit_rate": 0.25}
    # Not a cluster: no section.
    assert build_view(parse_stats({}), history={}, rpc=[], generated_s=0.0)["cluster"] is None
    with pytest.raises(StatsFormatError, match=r"stats.cluster.replicas: expected a list"):
        parse_stats({"cluster": {"replicas": {"a": 1}}})
