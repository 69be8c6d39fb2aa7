"""What the shadow replay tallies: one observed access, and the figures per simulated pool
and over the whole stream (``replay.ShadowReplay`` fills them, ``estimate`` reports them)."""

from __future__ import annotations

from dataclasses import dataclass, field

COUNTED = (  # ShadowCounts the estimate reports as they are
    "orphan_parents", "truncated_accesses", "other_medium_events", "manager_errors",
    "continuations", "lone_reports", "retried_reports", "repeat_accesses",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Access:
    """One request's prompt blocks as the events show them (root first); the first ``held``
    are blocks a running request holds already (a continuation: not looked up again)."""

    chain: tuple[bytes, ...]
    session_id: str | None
    held: int = 0
    observed_new: int = 0  # blocks of it the stock engine computed (not resident before)


@dataclass(slots=True)
class PoolFigures:
    """One simulated pool's tally over the accesses."""

    lookup_blocks: int = 0
    hit_blocks: int = 0
    computed_blocks: int = 0
    prefill_s: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hit_blocks / self.lookup_blocks if self.lookup_blocks else None

    def minus(self, before: PoolFigures) -> PoolFigures:
        """What was tallied since ``before`` (a copy taken then)."""
        return PoolFigures(
            self.lookup_blocks - before.lookup_blocks,
            self.hit_blocks - before.hit_blocks,
            self.computed_blocks - before.computed_blocks,
            self.prefill_s - before.prefill_s,
        )

    def take_back(self, delta: PoolFigures) -> None:
        """Undo ``delta`` (an access that turned out not to have run)."""
        self.lookup_blocks -= delta.lookup_blocks
        self.hit_blocks -= delta.hit_blocks
        self.computed_blocks -= delta.computed_blocks
        self.prefill_s -= delta.prefill_s


@dataclass(slots=True)
class ShadowCounts:
    batches: int = 0
    accesses: int = 0
    observed_stored_blocks: int = 0  # GPU blocks the stock engine computed and cached
    observed_removed_blocks: int = 0
    clears: int = 0
    other_medium_events: int = 0
    orphan_parents: int = 0  # a stored event whose parent the shadow never saw
    truncated_accesses: int = 0
    manager_errors: int = 0
    continuations: int = 0  # accesses that continue a running request (full mode)
    lone_reports: int = 0  # new accesses whose blocks the engine all held (a reuse report only)
    retried_reports: int = 0  # lone reports of a scheduling attempt that failed (dropped)
    repeat_accesses: int = 0  # new accesses of a session whose request of that step is held
    lru: PoolFigures = field(default_factory=PoolFigures)
    plan: PoolFigures = field(default_factory=PoolFigures)
