"""Prometheus metrics for pbkv, on a registry of their own (never the process-global one, so
several services or tests in one process never collide).

Two kinds of metrics live here:

- RPC metrics are ordinary prometheus-client collectors fed by the servicer through
  ``observe_rpc(method, code, latency_s)`` (rates come from ``rate(pbkv_rpc_requests_total)``).
- Cache and predictor metrics mirror the latest stats snapshot (``update_from_stats``). They
  are produced by a custom collector from ONE parsed ``Stats`` value at scrape time, so a scrape
  never mixes two snapshots, and an agent or app that disappears from the stats disappears from
  ``/metrics`` too (no stale labelled gauges). Cumulative block and token counts are exported
  as counters; rates and ratios as gauges. A ratio that is not measured yet (no lookups, no
  scored step) is left out rather than exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pbkv.dashboard.schema import TIERS, ScopeCounts, ShadowFigures, Stats, parse_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# RPCs take from tens of microseconds (in-process) to seconds (a slow store); buckets in s.
RPC_LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

# scope label name -> Stats attribute holding (name, ScopeCounts) pairs
SCOPES = {"engine": "per_engine", "app": "per_app", "agent": "per_agent"}


class PbkvMetrics:
    """pbkv's collectors on ``registry`` (a fresh ``CollectorRegistry`` by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.rpc_requests = Counter(
            "pbkv_rpc_requests",
            "gRPC requests handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "pbkv_rpc_latency_seconds",
            "gRPC handler latency in seconds, by method",
            ["method"],
            buckets=RPC_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._stats_collector = _StatsCollector()
        self.registry.register(self._stats_collector)

    def observe_rpc(self, method: str, code: str, latency_s: float) -> None:
        """Count one handled RPC (``code``: a gRPC status name such as ``OK``)."""
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.rpc_requests.labels(method=method, code=code).inc()
        self.rpc_latency.labels(method=method).observe(latency_s)

    def update_from_stats(self, stats: Mapping[str, Any] | Stats) -> Stats:
        """Replace the stats snapshot the cache metrics show; returns the parsed value.
        A malformed dict raises ``StatsFormatError`` and leaves the previous snapshot."""
        parsed = stats if isinstance(stats, Stats) else parse_stats(stats)
        self._stats_collector.stats = parsed  # one reference swap: scrapes see old or new
        return parsed

    @property
    def stats(self) -> Stats | None:
        return self._stats_collector.stats

    def rpc_summary(self) -> list[dict[str, Any]]:
        """Per method: requests, errors (code != OK) and, for a unary call, its mean latency;
        for a long-lived stream (``STREAMS``: observed once, when it ends) the mean lifetime
        instead, which is not a latency."""
        by_method: dict[str, dict[str, Any]] = {}
        for metric in self.rpc_requests.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                row = by_method.setdefault(sample.labels["method"], _rpc_row())
                row["requests"] += int(sample.value)
                if sample.labels["code"] != "OK":
                    row["errors"] += int(sample.value)
        for metric in self.rpc_latency.collect():
            for sample in metric.samples:
                row = by_method.setdefault(sample.labels["method"], _rpc_row())
                if sample.name.endswith("_sum"):
                    row["latency_sum_s"] = sample.value
        rows = []
        for method in sorted(by_method):
            row = by_method[method]
            latency_sum_s = row.pop("latency_sum_s")
            mean_s = latency_sum_s / row["requests"] if row["requests"] else None
            if method in STREAMS:
                rows.append({"method": method, "kind": "stream", **row, "mean_lifetime_s": mean_s})
            else:
                rows.append(
                    {
                        "method": method,
                        "kind": "unary",
                        **row,
                        "mean_latency_ms": None if mean_s is None else 1000.0 * mean_s,
                    }
                )
        return rows

    def exposition(self) -> bytes:
        """The Prometheus text format of every collector on the registry."""
        return generate_latest(self.registry)


# Methods observed once per stream, when it ends (service/servicers/engines.py: an engine's
# EngineLink.Attach stream lives as long as the engine): their "latency" is a lifetime.
# Session's messages are observed one by one ("Session.<kind>"), as unary calls are.
STREAMS = frozenset({"Attach"})


def _rpc_row() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "latency_sum_s": 0.0}


class _StatsCollector(Collector):
    def __init__(self) -> None:
        self.stats: Stats | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        yield from _hit_families("pbkv_cache", "", [], [((), stats.overall)])
        for label, attr in SCOPES.items():
            rows = [((name,), scope) for name, scope in getattr(stats, attr)]
            yield from _hit_families(f"pbkv_{label}", f" per {label}", [label], rows)
        yield from _token_families("pbkv", "", stats)
        yield _counter(
            "pbkv_prefetched_blocks",
            "blocks a plan prefetched that reached the GPU",
            stats.prefetched_blocks,
        )
        yield _counter(
            "pbkv_prefetch_used_blocks",
            "prefetched blocks hit before leaving the GPU",
            stats.prefetch_used_blocks,
        )
        yield _counter(
            "pbkv_prefetch_wasted_blocks",
            "prefetched blocks that left the GPU unused",
            stats.prefetch_wasted_blocks,
        )
        yield from _optional_gauge(
            "pbkv_prefetch_precision",
            "prefetched blocks used / (used + wasted)",
            stats.prefetch_precision,
        )
        yield from _optional_gauge(
            "pbkv_prefetch_recall",
            "used prefetched blocks / (those + CPU blocks loaded on demand)",
            stats.prefetch_recall,
        )
        yield from _optional_gauge(
            "pbkv_predictor_top1_accuracy",
            "online top-1 accuracy of next-agent forecasts",
            stats.top1_accuracy,
        )
        calibration = GaugeMetricFamily(
            "pbkv_predictor_calibration_error",
            "online calibration error of forecasts (lower is better; see the metric label)",
            labels=["metric"],
        )
        if stats.calibration is not None:
            calibration.add_metric([stats.calibration_metric], stats.calibration)
        if stats.ece is not None:
            calibration.add_metric(["ece"], stats.ece)
        yield calibration
        yield GaugeMetricFamily(
            "pbkv_predictor_scored_steps",
            "recent forecasts the online accuracy is measured over",
            value=stats.scored_steps,
        )
        yield _counter(
            "pbkv_predictor_errors",
            "forecasts that raised or were rejected",
            stats.predictor_errors,
        )
        yield GaugeMetricFamily(
            "pbkv_fallback_lru",
            "1 while the scorer has fallen back to LRU (low accuracy)",
            value=1.0 if stats.fallback_lru else 0.0,
        )
        yield GaugeMetricFamily(
            "pbkv_active_workflows", "workflows started and not ended", value=stats.active_workflows
        )
        cached = GaugeMetricFamily(
            "pbkv_cached_blocks", "KV blocks cached now, per tier", labels=["tier"]
        )
        cached.add_metric(["gpu"], stats.gpu_blocks_cached)
        cached.add_metric(["cpu"], stats.cpu_blocks_cached)
        yield cached
        yield GaugeMetricFamily(
            "pbkv_directory_blocks", "blocks in the block directory", value=stats.directory_blocks
        )
        yield _counter("pbkv_plans_built", "cache plans built", stats.plans_built)
        ages = GaugeMetricFamily(
            "pbkv_engine_plan_age_seconds",
            "seconds since the engine's last plan went out (an engine drops a plan older than "
            "its max_plan_age_s, 30 s by default, and runs plain LRU)",
            labels=["engine"],
        )
        for engine, age in stats.plan_age_s:
            ages.add_metric([engine], age)
        yield ages
        yield from _optional_gauge(
            "pbkv_workflows_done", "a replay's finished workflows", stats.workflows_done
        )
        yield from _optional_gauge(
            "pbkv_workflows_total", "a replay's workflows in all", stats.workflows_total
        )
        if stats.baseline_lru is not None:
            yield from _optional_gauge(
                "pbkv_baseline_lru_workflows_done",
                "finished workflows of the LRU baseline as shown (equal progress: the same "
                "number as pbkv_workflows_done)",
                stats.baseline_lru.workflows_done,
            )
            yield from _hit_families(
                "pbkv_baseline_lru_cache",
                " of the LRU baseline",
                [],
                [((), stats.baseline_lru.overall)],
            )
            yield from _token_families("pbkv_baseline_lru", " (LRU baseline)", stats.baseline_lru)
        if stats.shadow is not None:
            yield from _shadow_families(stats.shadow)


def _shadow_families(shadow: ShadowFigures) -> Iterator[Metric]:
    """Shadow mode's estimate (docs/deploy.md): gauges, as an estimate can go down."""
    rate = GaugeMetricFamily(
        "pbkv_shadow_hit_rate",
        "shadow estimate: simulated GPU hit rate of the stock engine's accesses, per policy",
        labels=["policy"],
    )
    computed = GaugeMetricFamily(
        "pbkv_shadow_computed_blocks",
        "shadow: blocks computed -- observed (the stock engine's BlockStored) or simulated",
        labels=["source"],
    )
    for name, value in (("lru", shadow.lru_hit_rate), ("pbkv", shadow.pbkv_hit_rate)):
        if value is not None:
            rate.add_metric([name], value)
    for name, count in (
        ("observed", shadow.observed_computed_blocks),
        ("lru", shadow.lru_computed_blocks),
        ("pbkv", shadow.pbkv_computed_blocks),
    ):
        computed.add_metric([name], count)
    yield rate
    yield computed
    yield GaugeMetricFamily(
        "pbkv_shadow_saved_tokens",
        "shadow estimate: prompt tokens pbkv's plans would not recompute (vs LRU)",
        value=shadow.saved_tokens,
    )
    yield GaugeMetricFamily(
        "pbkv_shadow_saved_prefill_seconds",
        "shadow estimate: prefill seconds saved (simulator cost model)",
        value=shadow.saved_prefill_s,
    )
    yield from _optional_gauge(
        "pbkv_shadow_calibration_error",
        "shadow: |simulated LRU computed - observed computed| / observed blocks",
        shadow.calibration_error,
    )
    yield GaugeMetricFamily(
        "pbkv_shadow_lost_batches",
        "shadow: KV-event batches missed (sequence gaps not refilled)",
        value=shadow.lost_batches,
    )


def _token_families(prefix: str, what: str, stats: Stats) -> Iterator[Metric]:
    yield _counter(
        f"{prefix}_reused_tokens", f"prompt tokens served from cached KV{what}", stats.reused_tokens
    )
    yield _counter(
        f"{prefix}_recomputed_tokens",
        f"prompt tokens whose KV was computed{what}",
        stats.recomputed_tokens,
    )
    yield from _optional_gauge(
        f"{prefix}_reused_token_ratio",
        f"reused / (reused + recomputed) prompt tokens{what}",
        stats.reused_fraction,
    )


def _hit_families(
    prefix: str, what: str, labels: list[str], rows: list[tuple[tuple[str, ...], ScopeCounts]]
) -> Iterator[Metric]:
    hits = CounterMetricFamily(
        f"{prefix}_hit_blocks",
        f"prompt KV blocks found on the GPU / loaded from the CPU{what}",
        labels=[*labels, "tier"],
    )
    lookups = CounterMetricFamily(
        f"{prefix}_lookup_blocks",
        f"prompt KV blocks looked up (GPU first, then CPU){what}",
        labels=labels,
    )
    rate = GaugeMetricFamily(
        f"{prefix}_hit_rate",
        f"hit_blocks of the tier / all lookup_blocks{what}",
        labels=[*labels, "tier"],
    )
    for values, scope in rows:
        lookups.add_metric(list(values), scope.lookup_blocks)
        for tier in TIERS:
            hits.add_metric([*values, tier], scope.hit_blocks(tier))
            rate_value = scope.hit_rate(tier)
            if rate_value is not None:
                rate.add_metric([*values, tier], rate_value)
    yield from (hits, lookups, rate)


def _counter(name: str, documentation: str, value: int) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _optional_gauge(name: str, documentation: str, value: float | None) -> Iterator[Metric]:
    gauge = GaugeMetricFamily(name, documentation, labels=[])
    if value is not None:
        gauge.add_metric([], value)
    yield gauge
