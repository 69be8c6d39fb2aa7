import pytest

from pbkv.dashboard.schema import KeptBlock, StatsFormatError, TierCounts, parse_stats


def test_parses_documented_shape():
    stats = parse_stats({
        "policy": "pbkv",
        "tiers": {"gpu": {"hit_blocks": 3, "lookup_blocks": 4}},
        "per_agent": {"b": {"cpu": {"hit_blocks": 1, "lookup_blocks": 2}}, "a": {}},
        "reused_tokens": 30, "recomputed_tokens": 10,
        "prefetch": {"precision": 0.5, "recall": None},
        "predictor": {"top1_accuracy": 1, "calibration": 0.25, "calibration_metric": "brier"},
        "fallback_lru": True, "active_workflows": 2,
        "top_kept": [{"block_hash": b"\x0a\xff", "score": 2, "p_reuse": 0.5, "eta_steps": None,
                      "recompute_cost_ms": 3.5, "reload_cost_ms": 1, "consumers": 4}],
        "baseline_lru": {"tiers": {"gpu": {"hit_blocks": 1, "lookup_blocks": 4}}},
        "unknown_key": "ignored",
    })
    assert stats.overall.gpu == TierCounts(3, 4) and stats.overall.gpu.hit_rate == 0.75
    assert stats.overall.cpu.hit_rate is None  # no lookups: unknown, not 0
    assert [name for name, _ in stats.per_agent] == ["a", "b"]  # sorted
    assert stats.per_agent[1][1].cpu == TierCounts(1, 2)
    assert stats.reused_fraction == 0.75
    assert (stats.prefetch_precision, stats.prefetch_recall) == (0.5, None)
    assert (stats.top1_accuracy, stats.calibration, stats.calibration_metric) == (1.0, 0.25,
                                                                                 "brier")
    assert stats.fallback_lru is True and stats.active_workflows == 2
    assert stats.top_kept == (KeptBlock("0aff", 2.0, 0.5, None, 3.5, 1.0, 4),)
    assert stats.baseline_lru is not None and stats.baseline_lru.overall.gpu.hit_rate == 0.25


def test_empty_dict_is_an_idle_service():
    stats = parse_stats({})
    assert stats.overall.gpu.hit_rate is None and stats.reused_fraction is None
    assert stats.baseline_lru is None and stats.top_kept == ()


@pytest.mark.parametrize(("raw", "message"), [
    ({"tiers": {"gpu": {"hit_blocks": "3"}}}, "stats.tiers.gpu.hit_blocks: expected a count"),
    ({"tiers": {"cpu": {"hit_blocks": 5, "lookup_blocks": 4}}},
     "stats.tiers.cpu: hit_blocks 5 > lookup_blocks 4"),
    ({"per_app": {"x": {"gpu": {"lookup_blocks": -1}}}},
     "stats.per_app.x.gpu.lookup_blocks: expected a count"),
    ({"prefetch": {"recall": 1.5}}, r"stats.prefetch.recall: expected a value in \[0, 1\]"),
    ({"predictor": {"top1_accuracy": float("nan")}}, "stats.predictor.top1_accuracy"),
    ({"fallback_lru": 1}, "stats.fallback_lru: expected true/false"),
    ({"top_kept": [{"block_hash": "ab", "score": None}]}, r"stats.top_kept\[0\].score"),
    ({"baseline_lru": {"reused_tokens": 1.5}}, "stats.baseline_lru.reused_tokens"),
    ([], "stats: expected an object"),
])
def test_bad_fields_are_named(raw, message):
    with pytest.raises(StatsFormatError, match=message):
        parse_stats(raw)
