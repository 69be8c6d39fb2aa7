"""``ConnectorStats``: the scheduler-side connector's counters, one flat record (the benchmark
rows read it whole). ``PbkvConnector`` counts steps and hook time, ``PlanApplier`` the plans,
host-tier hits and prefetches, ``BlockReporter`` the requests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ConnectorStats:
    steps: int = 0
    plans_applied: int = 0
    steps_without_pressure: int = 0  # no plan taken: nothing cached could be evicted soon
    scheduler_s: float = 0.0  # wall seconds in the scheduler-side hooks (incl. the link)
    missing_plan_blocks: int = 0
    host_hit_blocks: int = 0
    prefetched_blocks: int = 0
    prefetch_wanted: int = 0  # plan prefetch blocks the host tier holds, summed over steps
    prefetch_no_parent: int = 0  # ... skipped: parent not on the GPU
    prefetch_no_room: int = 0  # steps a prefetch stopped at a block it may not take
    # host-tier victims by the order that chose them (``host_tier.DROP_REASONS``), and requests
    # whose prompt, past its GPU and host-tier hits, went on into a block the tier had dropped
    # (the first such block's reason): what each order's drops cost
    host_dropped_spare: int = 0
    host_dropped_plan: int = 0
    host_dropped_lru: int = 0
    host_miss_dropped_spare: int = 0
    host_miss_dropped_plan: int = 0
    host_miss_dropped_lru: int = 0
    requests_tagged: int = 0
    requests_anonymous: int = 0


def count_reason(stats: ConnectorStats, prefix: str, reason: str) -> None:
    """Add one to ``stats.<prefix>_<reason>`` (``host_dropped`` or ``host_miss_dropped``)."""
    name = f"{prefix}_{reason}"
    setattr(stats, name, getattr(stats, name) + 1)
