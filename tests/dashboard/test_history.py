import pytest

from pbkv.dashboard.history import StatsHistory
from pbkv.dashboard.schema import parse_stats


def _stats(gpu_hits, lookups, lru_hits=None):
    raw = {"hits": {"gpu_hits": gpu_hits, "gpu_lookups": lookups, "cpu_hits": 0}}
    if lru_hits is not None:
        raw["baseline_lru"] = {"hits": {"gpu_hits": lru_hits, "gpu_lookups": lookups}}
    return parse_stats(raw)


def test_ring_keeps_the_latest_snapshots_with_cumulative_and_interval_rates():
    now = iter([10.0, 11.0, 12.0, 13.0])
    history = StatsHistory(capacity=3, clock=lambda: next(now))
    history.record(_stats(0, 0))  # t=10: nothing looked up yet
    history.record(_stats(1, 4))  # t=11: 1/4
    history.record(_stats(4, 8))  # t=12: cumulative 4/8, interval 3/4
    history.record(_stats(4, 10))  # t=13: cumulative 4/10, interval 0/2; t=10 falls out
    series = history.series()
    assert len(history) == 3
    assert series["t_s"] == [11.0, 12.0, 13.0]
    assert series["gpu"] == [0.25, 0.5, 0.4]
    # the oldest kept point has no predecessor in the ring: its interval is since the start
    assert series["gpu_interval"] == [0.25, 0.75, 0.0]
    assert series["cpu"] == [0.0, 0.0, 0.0]
    assert "baseline_lru_gpu" not in series


def test_baseline_series_and_counter_reset():
    now = iter([1.0, 2.0])
    history = StatsHistory(capacity=5, clock=lambda: next(now))
    history.record(_stats(6, 8, lru_hits=2))
    history.record(_stats(1, 2, lru_hits=1))  # counters went down: manager restarted
    series = history.series()
    assert series["baseline_lru_gpu"] == [0.25, 0.5]
    assert series["gpu_interval"] == [0.75, None]


def test_capacity_is_validated():
    with pytest.raises(ValueError, match="capacity must be >= 2"):
        StatsHistory(capacity=1)
