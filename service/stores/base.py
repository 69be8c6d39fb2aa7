"""The trace store interface: an append-only log of workflow events.

Every orchestrator event the service accepts is appended here *before* the RPC is answered,
so an acknowledged event survives a crash of the service (see each store for what "durable"
means there). On start the service replays the events of workflows that have not ended to
rebuild their state; finished workflows export as trace v1 for ``pbkv train``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from pbkv.service.records import EVENT_KINDS, EventRecord

__all__ = ["EVENT_KINDS", "EventRecord", "StoreError", "TraceStore"]


class StoreError(RuntimeError):
    """The store could not record or read events (the RPC fails with UNAVAILABLE)."""


class TraceStore(ABC):
    """Append-only event log. Contract: ``append`` returns only once the events are durable
    (as the store defines it) and returns their sequence numbers, increasing in append order
    (a store may put a ``StoreError`` in place of the number of an event that alone failed);
    ``events`` yields every event in that order. Not thread-safe: the service calls it from
    one writer thread at a time."""

    name: str = "store"

    @abstractmethod
    def append(self, events: Sequence[EventRecord]) -> list[int | StoreError]: ...

    @abstractmethod
    def events(self, after_seq: int = 0) -> Iterator[EventRecord]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections/files."""

    def describe(self) -> str:
        return self.name

    def ended_workflows(self, limit: int) -> list[tuple[str, str]]:
        """The last ``limit`` (tenant, workflow id) pairs whose latest run ended, oldest
        first."""
        ended: dict[tuple[str, str], None] = {}
        for e in self.events():
            key = (e.tenant, e.workflow_id)
            if e.kind == "start":
                ended.pop(key, None)
            elif e.kind == "end":
                ended.pop(key, None)
                ended[key] = None
                if len(ended) > limit:
                    del ended[next(iter(ended))]
        return list(ended)

    def active_events(self) -> Iterator[EventRecord]:
        """Events of the workflows whose latest run has not ended, in order (for the rebuild).
        Two streaming passes: memory grows with the number of workflows, not of events."""
        last_start: dict[tuple[str, str], int] = {}
        ended: set[tuple[str, str]] = set()
        for e in self.events():
            key = (e.tenant, e.workflow_id)
            if e.kind == "start":
                last_start[key] = e.seq
                ended.discard(key)
            elif e.kind == "end":
                ended.add(key)
        for e in self.events():
            key = (e.tenant, e.workflow_id)
            start = last_start.get(key)
            if start is not None and key not in ended and e.seq >= start:
                yield e
