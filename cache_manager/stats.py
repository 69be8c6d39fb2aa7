"""What the cache manager has seen, as frozen, JSON-ready counters (``CacheManager.stats``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pbkv.cache_manager.scorer import BlockScore

if TYPE_CHECKING:
    from pbkv.cache_manager.accuracy import OnlineAccuracy
    from pbkv.cache_manager.engines import ManagedEngine
    from pbkv.cache_manager.events import RequestStarted
    from pbkv.cache_manager.policies import Policy


# What ``CacheManager`` counts besides hits (``build_stats`` reads them).
COUNTERS = (
    "reused_tokens",
    "recomputed_tokens",
    "prefetched",
    "prefetch_used",
    "prefetch_wasted",
    "predictor_errors",
)


@dataclass(frozen=True, slots=True)
class HitStats:
    """Prompt blocks looked up and found, per tier. A block missing on the GPU is looked up
    on the CPU, so ``cpu_lookups = gpu_lookups - gpu_hits``."""

    gpu_hits: int = 0
    gpu_lookups: int = 0
    cpu_hits: int = 0
    cpu_lookups: int = 0

    @property
    def gpu_hit_rate(self) -> float | None:
        return self.gpu_hits / self.gpu_lookups if self.gpu_lookups else None

    @property
    def cpu_hit_rate(self) -> float | None:
        return self.cpu_hits / self.cpu_lookups if self.cpu_lookups else None

    def plus(self, gpu_hits: int, gpu_lookups: int, cpu_hits: int, cpu_lookups: int) -> HitStats:
        return HitStats(
            self.gpu_hits + gpu_hits,
            self.gpu_lookups + gpu_lookups,
            self.cpu_hits + cpu_hits,
            self.cpu_lookups + cpu_lookups,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "gpu_hit_rate": self.gpu_hit_rate,
            "cpu_hit_rate": self.cpu_hit_rate,
        }


@dataclass(frozen=True, slots=True)
class ManagerStats:
    policy: str
    fallback_lru: bool
    active_workflows: int
    engines: tuple[str, ...]
    hits: HitStats
    hits_by_engine: dict[str, HitStats] = field(default_factory=dict)
    hits_by_app: dict[str, HitStats] = field(default_factory=dict)
    hits_by_agent: dict[str, HitStats] = field(default_factory=dict)
    reused_tokens: int = 0
    recomputed_tokens: int = 0
    # blocks a plan asked to prefetch that the engine loaded CPU -> GPU ahead of any request
    # (a request's own CPU hits are demand loads, not prefetches; docs/dashboard.md)
    prefetched_blocks: int = 0
    prefetch_used_blocks: int = 0  # ... and were hit before leaving the GPU
    prefetch_wasted_blocks: int = 0  # ... and left the GPU unused
    prefetch_precision: float | None = None  # used / (used + wasted)
    prefetch_recall: float | None = None  # used / (used + CPU hits loaded on demand)
    predictor_top1_accuracy: float | None = None  # over the last judged forecasts
    predictor_brier: float | None = None  # calibration: mean Brier score of P(next)
    predictor_ece: float | None = None  # calibration of the confidence (accuracy.py)
    predictor_samples: int = 0
    predictor_errors: int = 0  # forecasts that raised or were rejected (treated as none)
    gpu_blocks_cached: int = 0
    cpu_blocks_cached: int = 0
    directory_blocks: int = 0
    plans_built: int = 0
    top_kept: tuple[BlockScore, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, HitStats):
                value = value.to_dict()
            elif name.startswith("hits_by_"):
                value = {k: v.to_dict() for k, v in value.items()}
            elif name == "top_kept":
                value = [block_score_dict(s) for s in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def block_score_dict(s: BlockScore) -> dict[str, Any]:
    """A ``BlockScore`` as JSON (hash as hex): the stats' ``top_kept`` entries, which the
    dashboard reads as they are (``dashboard.schema.BlockScoreDict``)."""
    return {**s._asdict(), "block_hash": s.block_hash.hex()}


def count_request(
    hits: dict[tuple[str, str], HitStats],
    counts: dict[str, int],
    ev: RequestStarted,
    engine_id: str,
    app: str | None,
    tokens_per_block: int,
) -> None:
    """Add one request's lookups to ``hits`` (overall, per engine, app and agent) and its
    reused / recomputed prompt tokens to ``counts``."""
    n, g, c = len(ev.block_hashes), ev.num_gpu_hit_blocks, ev.num_cpu_hit_blocks
    for key in (
        ("all", ""),
        ("engine", engine_id),
        ("app", app or "(untagged)"),
        ("agent", ev.agent or "(untagged)"),
    ):
        hits[key] = hits.get(key, HitStats()).plus(g, n, c, n - g)
    reused = min((g + c) * tokens_per_block, ev.num_prompt_tokens)
    counts["reused_tokens"] += reused
    counts["recomputed_tokens"] += ev.num_prompt_tokens - reused


def build_stats(
    policy: Policy,
    accuracy: OnlineAccuracy,
    active_workflows: int,
    engines: dict[str, ManagedEngine],
    hits: dict[tuple[str, str], HitStats],
    counts: dict[str, int],
    top_kept: tuple[BlockScore, ...],
) -> ManagerStats:
    """``CacheManager.stats``: the counters, hit rates by dimension and engine totals."""
    c = counts
    used, wasted = c["prefetch_used"], c["prefetch_wasted"]
    total = hits.get(("all", ""), HitStats())
    on_demand = total.cpu_hits

    def dim(name: str) -> dict[str, HitStats]:
        return {k: v for (d, k), v in hits.items() if d == name}

    return ManagerStats(
        policy=policy.name,
        fallback_lru=policy.uses_predictor and accuracy.fallback,
        active_workflows=active_workflows,
        engines=tuple(engines),
        hits=total,
        hits_by_engine=dim("engine"),
        hits_by_app=dim("app"),
        hits_by_agent=dim("agent"),
        reused_tokens=c["reused_tokens"],
        recomputed_tokens=c["recomputed_tokens"],
        prefetched_blocks=c["prefetched"],
        prefetch_used_blocks=used,
        prefetch_wasted_blocks=wasted,
        prefetch_precision=used / (used + wasted) if used + wasted else None,
        prefetch_recall=used / (used + on_demand) if used + on_demand else None,
        predictor_top1_accuracy=accuracy.top1,
        predictor_brier=accuracy.brier,
        predictor_ece=accuracy.ece,
        predictor_samples=accuracy.samples,
        predictor_errors=c["predictor_errors"],
        gpu_blocks_cached=sum(e.directory.gpu_used for e in engines.values() if not e.shadow),
        cpu_blocks_cached=sum(e.directory.cpu_used for e in engines.values() if not e.shadow),
        directory_blocks=sum(len(e.directory) for e in engines.values()),
        plans_built=sum(e.planner.plans_built for e in engines.values()),
        top_kept=top_kept,
    )
