"""The stats dict the dashboard consumes, and its parsed, frozen form.

The service hands the dashboard a ``stats_source() -> dict``: ``CacheManager.stats().to_dict()``
plus service-level keys. Everything the page and ``/metrics`` show is derived from ONE parsed
``Stats`` value (``parse_stats``), so the two can never disagree about a number.

Expected shape (``StatsDict``; every key optional unless marked, unknown keys ignored)::

    {
      "policy": "pbkv",
      "tiers": {"gpu": {"hit_blocks": 812, "lookup_blocks": 1400},     # cumulative counts
                "cpu": {"hit_blocks": 95,  "lookup_blocks": 1400}},
      "per_engine": {"sim-0": {"gpu": {...}, "cpu": {...}}},            # same TierCounts shape
      "per_app":    {"chatdev": {"gpu": {...}, "cpu": {...}}},
      "per_agent":  {"chatdev/Programmer": {"gpu": {...}, "cpu": {...}}},
      "reused_tokens": 51968, "recomputed_tokens": 37680,
      "prefetch": {"precision": 0.8, "recall": 0.4},                    # None: nothing measured
      "predictor": {"top1_accuracy": 0.71, "calibration": 0.06,
                    "calibration_metric": "ece", "scored_steps": 120},
      "fallback_lru": false,
      "active_workflows": 3,
      "top_kept": [{"block_hash": "9f3a...", "score": 12.5, "p_reuse": 0.9, "eta_steps": 1.0,
                    "recompute_cost_ms": 14.2, "reload_cost_ms": 1.1, "consumers": 2}],
      "baseline_lru": {"policy": "lru", "tiers": {...}, "reused_tokens": ...,
                       "recomputed_tokens": ...}                         # the demo's LRU twin
    }

A hit rate is ``hit_blocks / lookup_blocks`` of its tier; ``None`` (not 0) while there were no
lookups, so an idle service does not look like a cold cache. Block hashes may arrive as
``bytes`` (from ``BlockScore``) or hex strings; they are shown as hex.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

TIERS = ("gpu", "cpu")


class TierCountsDict(TypedDict):
    hit_blocks: int
    lookup_blocks: int


class BlockScoreDict(TypedDict):
    block_hash: str | bytes
    score: float
    p_reuse: float
    eta_steps: float | None
    recompute_cost_ms: float
    reload_cost_ms: float
    consumers: int


class StatsDict(TypedDict, total=False):
    policy: str
    tiers: dict[str, TierCountsDict]
    per_engine: dict[str, dict[str, TierCountsDict]]
    per_app: dict[str, dict[str, TierCountsDict]]
    per_agent: dict[str, dict[str, TierCountsDict]]
    reused_tokens: int
    recomputed_tokens: int
    prefetch: dict[str, float | None]
    predictor: dict[str, Any]
    fallback_lru: bool
    active_workflows: int
    top_kept: list[BlockScoreDict]
    baseline_lru: NotRequired[StatsDict]


class StatsFormatError(ValueError):
    """The stats dict does not have the documented shape; the message names the field."""


@dataclass(frozen=True, slots=True)
class TierCounts:
    hit_blocks: int = 0
    lookup_blocks: int = 0

    @property
    def hit_rate(self) -> float | None:
        return self.hit_blocks / self.lookup_blocks if self.lookup_blocks else None


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    """Hit counts of one scope (everything, one engine, one app or one agent) per tier."""

    gpu: TierCounts = TierCounts()
    cpu: TierCounts = TierCounts()

    def tier(self, name: str) -> TierCounts:
        return self.gpu if name == "gpu" else self.cpu


@dataclass(frozen=True, slots=True)
class KeptBlock:
    block_hash: str  # hex
    score: float
    p_reuse: float
    eta_steps: float | None
    recompute_cost_ms: float
    reload_cost_ms: float
    consumers: int


@dataclass(frozen=True, slots=True)
class Stats:
    policy: str = ""
    overall: ScopeCounts = ScopeCounts()
    per_engine: tuple[tuple[str, ScopeCounts], ...] = ()  # sorted by name
    per_app: tuple[tuple[str, ScopeCounts], ...] = ()
    per_agent: tuple[tuple[str, ScopeCounts], ...] = ()
    reused_tokens: int = 0
    recomputed_tokens: int = 0
    prefetch_precision: float | None = None
    prefetch_recall: float | None = None
    top1_accuracy: float | None = None
    calibration: float | None = None
    calibration_metric: str = "ece"
    scored_steps: int = 0
    fallback_lru: bool = False
    active_workflows: int = 0
    top_kept: tuple[KeptBlock, ...] = ()
    baseline_lru: Stats | None = None

    @property
    def reused_fraction(self) -> float | None:
        total = self.reused_tokens + self.recomputed_tokens
        return self.reused_tokens / total if total else None


def parse_stats(raw: Mapping[str, Any], where: str = "stats") -> Stats:
    """Validate ``raw`` (a ``StatsDict``) into ``Stats``; bad fields raise ``StatsFormatError``
    naming the field path (e.g. ``stats.tiers.gpu.hit_blocks``)."""
    if not isinstance(raw, Mapping):
        raise StatsFormatError(f"{where}: expected an object, got {type(raw).__name__}")
    prefetch = _mapping(raw.get("prefetch"), f"{where}.prefetch")
    predictor = _mapping(raw.get("predictor"), f"{where}.predictor")
    baseline = raw.get("baseline_lru")
    return Stats(
        policy=_str(raw.get("policy", ""), f"{where}.policy"),
        overall=_scope(raw.get("tiers"), f"{where}.tiers"),
        per_engine=_scopes(raw.get("per_engine"), f"{where}.per_engine"),
        per_app=_scopes(raw.get("per_app"), f"{where}.per_app"),
        per_agent=_scopes(raw.get("per_agent"), f"{where}.per_agent"),
        reused_tokens=_count(raw.get("reused_tokens", 0), f"{where}.reused_tokens"),
        recomputed_tokens=_count(raw.get("recomputed_tokens", 0), f"{where}.recomputed_tokens"),
        prefetch_precision=_ratio(prefetch.get("precision"), f"{where}.prefetch.precision"),
        prefetch_recall=_ratio(prefetch.get("recall"), f"{where}.prefetch.recall"),
        top1_accuracy=_ratio(predictor.get("top1_accuracy"), f"{where}.predictor.top1_accuracy"),
        calibration=_ratio(predictor.get("calibration"), f"{where}.predictor.calibration"),
        calibration_metric=_str(predictor.get("calibration_metric", "ece"),
                                f"{where}.predictor.calibration_metric"),
        scored_steps=_count(predictor.get("scored_steps", 0), f"{where}.predictor.scored_steps"),
        fallback_lru=_bool(raw.get("fallback_lru", False), f"{where}.fallback_lru"),
        active_workflows=_count(raw.get("active_workflows", 0), f"{where}.active_workflows"),
        top_kept=_kept(raw.get("top_kept"), f"{where}.top_kept"),
        baseline_lru=None if baseline is None else parse_stats(baseline, f"{where}.baseline_lru"),
    )


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


def _tier(value: Any, where: str) -> TierCounts:
    tier = _mapping(value, where)
    counts = TierCounts(_count(tier.get("hit_blocks", 0), f"{where}.hit_blocks"),
                        _count(tier.get("lookup_blocks", 0), f"{where}.lookup_blocks"))
    if counts.hit_blocks > counts.lookup_blocks:
        raise StatsFormatError(f"{where}: hit_blocks {counts.hit_blocks} > lookup_blocks "
                               f"{counts.lookup_blocks}")
    return counts


def _scope(value: Any, where: str) -> ScopeCounts:
    scope = _mapping(value, where)
    return ScopeCounts(_tier(scope.get("gpu"), f"{where}.gpu"),
                       _tier(scope.get("cpu"), f"{where}.cpu"))


def _scopes(value: Any, where: str) -> tuple[tuple[str, ScopeCounts], ...]:
    scopes = _mapping(value, where)
    return tuple((str(name), _scope(scopes[name], f"{where}.{name}")) for name in sorted(scopes))


def _hex(value: Any, where: str) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return _str(value, where)


def _kept(value: Any, where: str) -> tuple[KeptBlock, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise StatsFormatError(f"{where}: expected a list, got {type(value).__name__}")
    blocks = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        block = _mapping(item, at)
        eta = block.get("eta_steps")
        blocks.append(KeptBlock(
            block_hash=_hex(block.get("block_hash"), f"{at}.block_hash"),
            score=_number(block.get("score"), f"{at}.score"),
            p_reuse=_number(block.get("p_reuse"), f"{at}.p_reuse"),
            eta_steps=None if eta is None else _number(eta, f"{at}.eta_steps"),
            recompute_cost_ms=_number(block.get("recompute_cost_ms"), f"{at}.recompute_cost_ms"),
            reload_cost_ms=_number(block.get("reload_cost_ms"), f"{at}.reload_cost_ms"),
            consumers=_count(block.get("consumers", 0), f"{at}.consumers"),
        ))
    return tuple(blocks)
