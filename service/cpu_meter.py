"""Per-component CPU accounting of the service, for ``pbkv bench service`` (off by default).

With ``PBKV_CPU_METER=<file>`` in its environment, ``pbkv serve`` wraps the parts of an
orchestrator event's path with CPU-time accumulators (``time.thread_time``: the CPU of the
thread that runs them, so the store's writer thread is counted apart from the event loop) and
writes a snapshot to ``<file>`` on SIGUSR1::

    {"n": 3, "process_cpu_s": 12.5, "events": 40210, "requests": 9120, "replies": 4002,
     "commits": 2100,
     "cpu_s": {"validation": 0.1, "manager": 1.9, "predictor": 1.2, "convert": 0.2, "store": 2.0}}

Contract: ``cpu_s["manager"]`` includes ``predictor`` (the predictor runs inside the
manager); everything not in ``cpu_s`` (gRPC, asyncio, protobuf parsing, the recorder's
futures) is ``process_cpu_s`` minus ``manager``, ``validation``, ``convert`` and ``store``.
``events`` counts the orchestrator events handled, ``requests`` and ``replies`` the
``Session`` stream's messages, ``commits`` the store's. Without the variable nothing is wrapped
and serving pays nothing. Two snapshots' difference divided by the events between them is
the CPU per event of each part. The per-event parts are timed on one call in
``SAMPLE_EVERY`` (``CpuMeter.timed``), which keeps the meter's own clock reads from weighing on
the process total it is compared with; the store's (one call per commit) on every call.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ENV = "PBKV_CPU_METER"
COMPONENTS = ("validation", "manager", "predictor", "convert", "store")
SAMPLE_EVERY = 8  # per-event parts: one call timed in this many, on average

F = TypeVar("F", bound=Callable[..., Any])


class CpuMeter:
    """CPU seconds per component; ``timed`` wraps a callable, ``write`` saves a snapshot."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.thread_time) -> None:
        self.path = path
        self._clock = clock
        self.cpu_s = dict.fromkeys(COMPONENTS, 0.0)
        self.events = 0
        self.requests = self.replies = 0  # Session stream messages in and out
        self.commits: Callable[[], int] = lambda: 0  # the store's commits so far
        self._snapshots = 0

    @classmethod
    def from_env(cls) -> CpuMeter | None:
        value = os.environ.get(ENV)
        return cls(Path(value)) if value else None

    def timed(self, component: str, fn: F, *, every: int = 1) -> F:
        """``fn`` with its CPU time added to ``component``. ``every`` > 1 times one call in
        ``every`` on average (random gaps of 1 to 2 * every - 1 calls, so no periodic pattern
        of calls is missed) and counts it ``every`` times: reading the thread's CPU clock is a
        system call (~1.5 us), dearer than many a call it would time."""
        if component not in self.cpu_s:
            raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        cpu_s, clock = self.cpu_s, self._clock
        gap = random.Random(component).randrange if every > 1 else lambda _lo, _hi: 1
        countdown = [gap(1, 2 * every)]

        def wrapper(*args, **kwargs):
            countdown[0] -= 1
            if countdown[0]:
                return fn(*args, **kwargs)
            countdown[0] = gap(1, 2 * every)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu_s[component] += (clock() - t0) * every

        return wrapper  # type: ignore[return-value]

    def snapshot(self) -> dict[str, Any]:
        return {
            "n": self._snapshots,
            "process_cpu_s": time.process_time(),
            "events": self.events,
            "requests": self.requests,
            "replies": self.replies,
            "commits": self.commits(),
            "cpu_s": dict(self.cpu_s),
        }

    def write(self) -> None:
        """Save a snapshot (write + rename: a reader never sees half a file)."""
        self._snapshots += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()) + "\n")
        tmp.replace(self.path)


def per_event_us(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Microseconds of CPU per event of each part between two snapshots: the components,
    ``manager`` without ``predictor``, ``grpc_and_rest`` (the remainder) and ``total``."""
    events = after["events"] - before["events"]
    if events <= 0:
        raise ValueError("no events between the two snapshots")
    d = {c: after["cpu_s"][c] - before["cpu_s"][c] for c in COMPONENTS}
    total = after["process_cpu_s"] - before["process_cpu_s"]
    parts = {
        "validation": d["validation"],
        "manager": d["manager"] - d["predictor"],
        "predictor": d["predictor"],
        "convert": d["convert"],
        "store": d["store"],
    }
    parts["grpc_and_rest"] = total - sum(parts.values())
    parts["total"] = total
    out = {k: 1e6 * v / events for k, v in parts.items()}
    for messages, label in (
        ("requests", "events_per_request"),
        ("replies", "events_per_reply"),
        ("commits", "events_per_commit"),
    ):
        count = after.get(messages, 0) - before.get(messages, 0)
        out[label] = events / count if count else 0.0
    return out
