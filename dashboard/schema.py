"""The stats dict the dashboard consumes, and its parsed, frozen form.

The service hands the dashboard a ``stats_source() -> dict``: ``CacheManager.stats().to_dict()``
(``pbkv.cache_manager.stats.ManagerStats``) plus the service's keys. Everything the page and
``/metrics`` show is derived from ONE parsed ``Stats`` value (``parse_stats``), so the two can
never disagree about a number.

Shape read (``StatsDict``; every key optional, unknown keys ignored)::

    {
      "policy": "pbkv", "fallback_lru": false, "active_workflows": 3,
      "hits": {"gpu_hits": 812, "gpu_lookups": 1400,          # cumulative prompt blocks;
               "cpu_hits": 95, "cpu_lookups": 588},           # CPU is looked up on GPU misses
      "hits_by_engine": {"sim-0": {...same...}}, "hits_by_app": {...}, "hits_by_agent": {...},
      "reused_tokens": 51968, "recomputed_tokens": 37680,
      "prefetched_blocks": 40, "prefetch_used_blocks": 30, "prefetch_wasted_blocks": 6,
      "prefetch_precision": 0.83, "prefetch_recall": 0.24,    # null: nothing measured yet
      "predictor_top1_accuracy": 0.71, "predictor_brier": 0.31, "predictor_ece": 0.04,
      "predictor_samples": 120,
      "predictor_errors": 0,
      "gpu_blocks_cached": 500, "cpu_blocks_cached": 800, "directory_blocks": 1300,
      "plans_built": 77, "plan_age_s_by_engine": {"sim-0": 0.4},   # since its last plan
      "top_kept": [{"block_hash": "9f3a...", "score": 12.5, "p_reuse": 0.9, "eta_steps": 1.0,
                    "recompute_cost_ms": 14.2, "reload_cost_ms": 1.1, "consumers": 2}],
      "workflows_done": 12, "workflows_total": 36,   # a replay's progress (the demo sets it)
      "baseline_lru": {...the same shape, from the LRU twin the demo runs, with its own
                       workflows_done: the LRU run as it stood after that many workflows...},
      "service": {"events_recorded": 1234, "store": "sqlite:...", ...}   # shown as-is
    }

A tier's hit rate is its hits over ALL prompt blocks looked up (``gpu_lookups``), the way the
simulated engine, ``pbkv bench`` and ``pbkv demo`` report it, so GPU + CPU hit rates add up to
the share of prompt blocks not recomputed (the manager's own ``cpu_hit_rate`` divides by the
GPU misses instead). ``None`` (not 0) while there were no lookups, so an idle service does not
look like a cold cache. Block hashes may arrive as ``bytes`` or
hex strings; they are shown as hex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

TIERS = ("gpu", "cpu")


class HitStatsDict(TypedDict):
    gpu_hits: int
    gpu_lookups: int
    cpu_hits: int
    cpu_lookups: int


class BlockScoreDict(TypedDict):
    """``cache_manager.stats.block_score_dict``: a ``BlockScore`` as JSON; the dashboard keeps
    this form (validated, hash as hex) and shows it as it is."""

    block_hash: str | bytes
    score: float
    p_reuse: float
    eta_steps: float | None
    recompute_cost_ms: float
    reload_cost_ms: float
    consumers: int


class StatsDict(TypedDict, total=False):
    policy: str
    fallback_lru: bool
    active_workflows: int
    hits: HitStatsDict
    hits_by_engine: dict[str, HitStatsDict]
    hits_by_app: dict[str, HitStatsDict]
    hits_by_agent: dict[str, HitStatsDict]
    reused_tokens: int
    recomputed_tokens: int
    prefetched_blocks: int
    prefetch_used_blocks: int
    prefetch_wasted_blocks: int
    prefetch_precision: float | None
    prefetch_recall: float | None
    predictor_top1_accuracy: float | None
    predictor_brier: float | None
    predictor_ece: NotRequired[float | None]
    predictor_samples: int
    predictor_errors: int
    gpu_blocks_cached: int
    cpu_blocks_cached: int
    directory_blocks: int
    plans_built: int
    plan_age_s_by_engine: NotRequired[dict[str, float]]
    top_kept: list[BlockScoreDict]
    workflows_done: NotRequired[int]
    workflows_total: NotRequired[int]
    baseline_lru: NotRequired[StatsDict]
    shadow: NotRequired[dict[str, Any]]  # ShadowFigures: shadow mode's estimate
    service: dict[str, Any]


class StatsFormatError(ValueError):
    """The stats dict does not have the documented shape; the message names the field."""


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    """Prompt blocks of one scope (everything, one engine, one app or one agent): looked up,
    and found on the GPU / loaded from the CPU tier (the rest were recomputed)."""

    lookup_blocks: int = 0
    gpu_hit_blocks: int = 0
    cpu_hit_blocks: int = 0

    def hit_blocks(self, tier: str) -> int:
        return self.gpu_hit_blocks if tier == "gpu" else self.cpu_hit_blocks

    def hit_rate(self, tier: str) -> float | None:
        return self.hit_blocks(tier) / self.lookup_blocks if self.lookup_blocks else None


@dataclass(frozen=True, slots=True)
class ShadowFigures:
    """Shadow mode's estimate (``pbkv serve --shadow``, docs/deploy.md): one stock engine's
    observed block accesses replayed against a simulated LRU pool and a pool following pbkv's
    plans. Estimates, not measurements; ``saved_*`` are negative when pbkv would lose."""

    engine_id: str = ""
    accesses: int = 0
    lookup_blocks: int = 0
    observed_computed_blocks: int = 0  # what the stock engine really computed (BlockStored)
    lru_computed_blocks: int = 0
    pbkv_computed_blocks: int = 0
    lru_hit_rate: float | None = None
    pbkv_hit_rate: float | None = None
    saved_tokens: int = 0
    saved_prefill_s: float = 0.0
    calibration_error: float | None = None  # |lru computed - observed| / observed
    lost_batches: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    policy: str = ""
    overall: ScopeCounts = ScopeCounts()
    per_engine: tuple[tuple[str, ScopeCounts], ...] = ()  # sorted by name
    per_app: tuple[tuple[str, ScopeCounts], ...] = ()
    per_agent: tuple[tuple[str, ScopeCounts], ...] = ()
    reused_tokens: int = 0
    recomputed_tokens: int = 0
    prefetched_blocks: int = 0
    prefetch_used_blocks: int = 0
    prefetch_wasted_blocks: int = 0
    prefetch_precision: float | None = None
    prefetch_recall: float | None = None
    top1_accuracy: float | None = None
    calibration: float | None = None
    calibration_metric: str = "brier"
    ece: float | None = None  # expected calibration error of the top P(next)
    scored_steps: int = 0
    predictor_errors: int = 0
    gpu_blocks_cached: int = 0
    cpu_blocks_cached: int = 0
    directory_blocks: int = 0
    plans_built: int = 0
    plan_age_s: tuple[tuple[str, float], ...] = ()  # per engine, sorted (the service's)
    fallback_lru: bool = False
    active_workflows: int = 0
    top_kept: tuple[BlockScoreDict, ...] = ()  # block_hash as hex
    workflows_done: int | None = None  # a replay's finished workflows (None: not a replay)
    workflows_total: int | None = None
    baseline_lru: Stats | None = None
    shadow: ShadowFigures | None = None
    service: tuple[tuple[str, str | int | float | bool | None], ...] = ()  # scalars, sorted
    # cluster mode: every live replica's summary (scalars: partitions, engine hits, delays)
    cluster: tuple[tuple[tuple[str, str | int | float | bool | None], ...], ...] = ()

    @property
    def reused_fraction(self) -> float | None:
        total = self.reused_tokens + self.recomputed_tokens
        return self.reused_tokens / total if total else None


COUNTS = (
    "reused_tokens",
    "recomputed_tokens",
    "prefetched_blocks",
    "prefetch_used_blocks",
    "prefetch_wasted_blocks",
    "gpu_blocks_cached",
    "cpu_blocks_cached",
    "directory_blocks",
    "plans_built",
)


def parse_stats(raw: Mapping[str, Any], where: str = "stats") -> Stats:
    """Validate ``raw`` (a ``StatsDict``) into ``Stats``; bad fields raise ``StatsFormatError``
    naming the field path (e.g. ``stats.hits.gpu_hits``)."""
    if not isinstance(raw, Mapping):
        raise StatsFormatError(f"{where}: expected an object, got {type(raw).__name__}")
    baseline = raw.get("baseline_lru")
    return Stats(
        policy=_str(raw.get("policy", ""), f"{where}.policy"),
        overall=_scope(raw.get("hits"), f"{where}.hits"),
        per_engine=_scopes(raw.get("hits_by_engine"), f"{where}.hits_by_engine"),
        per_app=_scopes(raw.get("hits_by_app"), f"{where}.hits_by_app"),
        per_agent=_scopes(raw.get("hits_by_agent"), f"{where}.hits_by_agent"),
        **{name: _count(raw.get(name, 0), f"{where}.{name}") for name in COUNTS},
        prefetch_precision=_ratio(raw.get("prefetch_precision"), f"{where}.prefetch_precision"),
        prefetch_recall=_ratio(raw.get("prefetch_recall"), f"{where}.prefetch_recall"),
        top1_accuracy=_ratio(
            raw.get("predictor_top1_accuracy"), f"{where}.predictor_top1_accuracy"
        ),
        calibration=_ratio(raw.get("predictor_brier"), f"{where}.predictor_brier"),
        calibration_metric="brier",
        ece=_ratio(raw.get("predictor_ece"), f"{where}.predictor_ece"),
        scored_steps=_count(raw.get("predictor_samples", 0), f"{where}.predictor_samples"),
        predictor_errors=_count(raw.get("predictor_errors", 0), f"{where}.predictor_errors"),
        fallback_lru=_bool(raw.get("fallback_lru", False), f"{where}.fallback_lru"),
        plan_age_s=_ages(raw.get("plan_age_s_by_engine"), f"{where}.plan_age_s_by_engine"),
        active_workflows=_count(raw.get("active_workflows", 0), f"{where}.active_workflows"),
        top_kept=_kept(raw.get("top_kept"), f"{where}.top_kept"),
        workflows_done=_optional_count(raw.get("workflows_done"), f"{where}.workflows_done"),
        workflows_total=_optional_count(raw.get("workflows_total"), f"{where}.workflows_total"),
        baseline_lru=None if baseline is None else parse_stats(baseline, f"{where}.baseline_lru"),
        shadow=_shadow(raw.get("shadow"), f"{where}.shadow"),
        service=_scalars(raw.get("service"), f"{where}.service"),
        cluster=_replicas(_mapping(raw.get("cluster"), f"{where}.cluster"), f"{where}.cluster"),
    )


def _shadow(value: Any, where: str) -> ShadowFigures | None:
    if value is None:
        return None
    raw = _mapping(value, where)
    error = raw.get("calibration_error")
    saved_tokens = raw.get("saved_tokens", 0)
    if isinstance(saved_tokens, bool) or not isinstance(saved_tokens, int):
        raise StatsFormatError(f"{where}.saved_tokens: expected an int, got {saved_tokens!r}")
    return ShadowFigures(
        engine_id=_str(raw.get("engine_id", ""), f"{where}.engine_id"),
        **{
            name: _count(raw.get(name, 0), f"{where}.{name}")
            for name in (
                "accesses",
                "lookup_blocks",
                "observed_computed_blocks",
                "lru_computed_blocks",
                "pbkv_computed_blocks",
                "lost_batches",
            )
        },
        lru_hit_rate=_ratio(raw.get("lru_hit_rate"), f"{where}.lru_hit_rate"),
        pbkv_hit_rate=_ratio(raw.get("pbkv_hit_rate"), f"{where}.pbkv_hit_rate"),
        saved_tokens=saved_tokens,
        saved_prefill_s=_number(raw.get("saved_prefill_s", 0.0), f"{where}.saved_prefill_s"),
        calibration_error=None if error is None else _number(error, f"{where}.calibration_error"),
    )


def _replicas(cluster: Mapping[str, Any], where: str) -> tuple:
    rows = cluster.get("replicas") or []
    if not isinstance(rows, list):
        raise StatsFormatError(f"{where}.replicas: expected a list, got {type(rows).__name__}")
    return tuple(_scalars(row, f"{where}.replicas[{i}]") for i, row in enumerate(rows))


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise StatsFormatError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise StatsFormatError(f"{where}: expected a string, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise StatsFormatError(f"{where}: expected true/false, got {value!r}")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StatsFormatError(f"{where}: expected a count (int >= 0), got {value!r}")
    return value


def _optional_count(value: Any, where: str) -> int | None:
    return None if value is None else _count(value, where)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise StatsFormatError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _ratio(value: Any, where: str) -> float | None:
    if value is None:
        return None
    number = _number(value, where)
    if not 0.0 <= number <= 1.0:
        raise StatsFormatError(f"{where}: expected a value in [0, 1], got {value!r}")
    return number


def _scope(value: Any, where: str) -> ScopeCounts:
    scope = _mapping(value, where)
    counts = ScopeCounts(
        _count(scope.get("gpu_lookups", 0), f"{where}.gpu_lookups"),
        _count(scope.get("gpu_hits", 0), f"{where}.gpu_hits"),
        _count(scope.get("cpu_hits", 0), f"{where}.cpu_hits"),
    )
    if counts.gpu_hit_blocks + counts.cpu_hit_blocks > counts.lookup_blocks:
        raise StatsFormatError(
            f"{where}: gpu_hits {counts.gpu_hit_blocks} + cpu_hits "
            f"{counts.cpu_hit_blocks} > gpu_lookups {counts.lookup_blocks} "
            f"(every prompt block is looked up on the GPU first)"
        )
    return counts


def _scalars(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """Scalar fields of a free-form section (lists of scalars joined), sorted by key."""
    out = []
    for key, item in sorted(_mapping(value, where).items()):
        if item is None or isinstance(item, str | int | float | bool):
            out.append((str(key), item))
        elif isinstance(item, list | tuple) and all(isinstance(v, str | int | float) for v in item):
            out.append((str(key), ", ".join(str(v) for v in item)))
    return tuple(out)


def _ages(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    out = []
    for name, age in sorted(_mapping(value, where).items()):
        age = _number(age, f"{where}.{name}")
        if age < 0:
            raise StatsFormatError(f"{where}.{name}: expected seconds >= 0, got {age!r}")
        out.append((str(name), age))
    return tuple(out)


def _scopes(value: Any, where: str) -> tuple[tuple[str, ScopeCounts], ...]:
    scopes = _mapping(value, where)
    return tuple((str(name), _scope(scopes[name], f"{where}.{name}")) for name in sorted(scopes))


def _hex(value: Any, where: str) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return _str(value, where)


def _kept(value: Any, where: str) -> tuple[BlockScoreDict, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise StatsFormatError(f"{where}: expected a list, got {type(value).__name__}")
    blocks = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        block = _mapping(item, at)
        eta = block.get("eta_steps")
        blocks.append(
            BlockScoreDict(
                block_hash=_hex(block.get("block_hash"), f"{at}.block_hash"),
                score=_number(block.get("score"), f"{at}.score"),
                p_reuse=_number(block.get("p_reuse"), f"{at}.p_reuse"),
                eta_steps=None if eta is None else _number(eta, f"{at}.eta_steps"),
                recompute_cost_ms=_number(
                    block.get("recompute_cost_ms"), f"{at}.recompute_cost_ms"
                ),
                reload_cost_ms=_number(block.get("reload_cost_ms"), f"{at}.reload_cost_ms"),
                consumers=_count(block.get("consumers", 0), f"{at}.consumers"),
            )
        )
    return tuple(blocks)
