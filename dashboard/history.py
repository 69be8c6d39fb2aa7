"""A bounded ring of hit-rate snapshots: the dashboard's "hit rate over time" chart.

Each snapshot keeps cumulative hit/lookup counts per tier (of pbkv and, when the stats carry
one, of the LRU baseline). Rates are derived on read, so the chart can show both the cumulative
rate (its last point equals the headline number and ``/metrics``) and the rate within each
interval (what changed since the previous snapshot).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pbkv.dashboard.schema import TIERS, ScopeCounts, Stats


@dataclass(frozen=True, slots=True)
class Snapshot:
    t_s: float
    overall: ScopeCounts
    baseline_lru: ScopeCounts | None


class StatsHistory:
    """The last ``capacity`` snapshots; ``clock`` is injectable for tests."""

    def __init__(self, capacity: int = 600, clock: Callable[[], float] = time.time) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 snapshots, got {capacity}")
        self._ring: deque[Snapshot] = deque(maxlen=capacity)
        self._clock = clock

    def record(self, stats: Stats) -> Snapshot:
        baseline = stats.baseline_lru.overall if stats.baseline_lru is not None else None
        snapshot = Snapshot(self._clock(), stats.overall, baseline)
        self._ring.append(snapshot)
        return snapshot

    def __len__(self) -> int:
        return len(self._ring)

    def snapshots(self) -> list[Snapshot]:
        return list(self._ring)

    def series(self) -> dict[str, Any]:
        """JSON-ready series: ``t_s`` and, per line, one rate (or ``None``) per snapshot.

        Lines: ``<tier>`` cumulative rate, ``<tier>_interval`` rate since the previous
        snapshot, and ``baseline_lru_<tier>`` (cumulative) when the baseline is present.
        """
        snaps = list(self._ring)
        out: dict[str, Any] = {"t_s": [s.t_s for s in snaps]}
        for tier in TIERS:
            out[tier] = [s.overall.hit_rate(tier) for s in snaps]
            previous = [None, *snaps[:-1]]
            out[f"{tier}_interval"] = [
                _interval(prev, cur, tier) for prev, cur in zip(previous, snaps, strict=True)
            ]
            if any(s.baseline_lru is not None for s in snaps):
                out[f"baseline_lru_{tier}"] = [
                    None if s.baseline_lru is None else s.baseline_lru.hit_rate(tier) for s in snaps
                ]
        return out


def _interval(prev: Snapshot | None, cur: Snapshot, tier: str) -> float | None:
    now = cur.overall
    hits, lookups = now.hit_blocks(tier), now.lookup_blocks
    if prev is not None:
        before = prev.overall
        hits, lookups = hits - before.hit_blocks(tier), lookups - before.lookup_blocks
    # counters that went down mean the manager restarted: no meaningful interval rate
    if lookups <= 0 or hits < 0:
        return None
    return hits / lookups
