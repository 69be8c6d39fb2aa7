"""The demo's comparison at equal progress: the LRU baseline's stats as a function of the
number of workflows it has finished, shown beside pbkv's run when pbkv has finished as many.

The LRU replay runs first (in process). ``WorkflowTap`` wraps its orchestrator and records the
manager's stats after each finished workflow (``BaselineCurve``). During pbkv's replay through
the service, another ``WorkflowTap`` counts pbkv's finished workflows and puts
``BaselineCurve.at(k)`` into the service's stats as ``baseline_lru``, with ``workflows_done`` /
``workflows_total`` on both, so the dashboard compares the two runs after the same number of
finished workflows (docs/dashboard.md). The same taps drive the demo's progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WorkflowTap:
    """An orchestrator that passes every call to ``inner`` and calls ``on_done(k)`` after the
    k-th ``end_workflow``."""

    def __init__(self, inner: Any, on_done: Callable[[int], None]) -> None:
        self.inner, self.on_done, self.done = inner, on_done, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def end_workflow(self, workflow_id: str, **kwargs: Any) -> Any:
        out = self.inner.end_workflow(workflow_id, **kwargs)
        self.done += 1
        self.on_done(self.done)
        return out


class BaselineCurve:
    """A baseline run's stats dict (``CacheManager.stats().to_dict()``) after 0, 1, ... N
    finished workflows."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._by_done: list[dict[str, Any]] = []

    def record(self, done: int, stats: dict[str, Any]) -> None:
        """The stats after ``done`` finished workflows (0 first: before the replay)."""
        if done != len(self._by_done):
            raise ValueError(
                f"stats after {done} workflows recorded, expected after {len(self._by_done)}"
            )
        self._by_done.append(stats)

    @property
    def complete(self) -> bool:
        return len(self._by_done) == self.total + 1

    def at(self, done: int) -> dict[str, Any]:
        """The baseline after ``done`` finished workflows, labelled with its progress."""
        done = min(done, len(self._by_done) - 1)
        return {**self._by_done[done], "workflows_done": done, "workflows_total": self.total}


def publish(extra_stats: dict[str, Any], curve: BaselineCurve, done: int) -> None:
    """Put pbkv's progress and the baseline at the same progress into the service's stats
    (``OperatorServicer.extra_stats``) in one ``dict.update`` (atomic under the GIL: a reader
    copying the dict sees all three old values or all three new ones)."""
    extra_stats.update(
        {"baseline_lru": curve.at(done), "workflows_total": curve.total, "workflows_done": done}
    )
