"""``WorkflowReporter``: an orchestrator's workflow events to pbkv without ever waiting on it.

    reporter = WorkflowReporter(ReporterConfig(target="127.0.0.1:50151"))
    reporter.start_workflow("run-1", app="coder-loop")        # returns at once
    reporter.step_started("run-1", "planner", now_s=t0)
    reporter.step_finished("run-1", "planner", output_text="...", start_s=t0, end_s=t1)
    reporter.end_workflow("run-1")
    reporter.close()

The framework integrations (``langgraph.py``) call it from their hooks; any other
orchestrator can call it directly.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from pbkv.predictor.forecast import Forecast
from pbkv.service.client import DEFAULT_TARGET, PbkvClient, PbkvError

log = logging.getLogger(__name__)
_DOWN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True, slots=True)
class ReporterConfig:
    target: str = DEFAULT_TARGET
    tenant: str | None = None
    token: str | None = None
    timeout_s: float = 1.0  # deadline of each RPC the sender makes
    max_queue: int = 10_000  # events waiting to be sent; beyond it new ones are dropped
    down_backoff_s: float = 0.5  # after UNAVAILABLE/DEADLINE: drop events for this long ...
    down_backoff_max_s: float = 10.0  # ... doubling up to this while pbkv stays away
    max_forecasts: int = 1_024  # workflows whose latest forecast is kept

    def __post_init__(self) -> None:
        for name in ("timeout_s", "down_backoff_s", "down_backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_queue", "max_forecasts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class ReporterStats:
    queued: int  # accepted into the queue
    sent: int  # acknowledged by pbkv
    failed: int  # refused by pbkv or lost in transit
    dropped_full: int  # not queued: the queue was full
    dropped_down: int  # dequeued while pbkv was known to be away
    waiting: int  # in the queue
    pending: int  # queued, not yet sent or dropped (waiting + the one being sent)


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # start, step_started, step_finished, end
    workflow_id: str
    fields: dict[str, Any]


class WorkflowReporter:
    """Contract: every reporting method returns at once (it appends to a bounded queue or,
    when the queue holds ``max_queue`` events, drops the event and counts it); one
    background thread sends the queue in order, each RPC with a deadline of ``timeout_s``.
    A failed RPC is counted and not retried; after UNAVAILABLE or DEADLINE_EXCEEDED the
    sender drops what it dequeues for a backoff that doubles (``down_backoff_s`` ..
    ``down_backoff_max_s``) while pbkv stays away, so a dead or hung pbkv costs the
    orchestrator nothing but the forecasts. ``latest_forecast`` answers from what
    StepFinished replies brought back (the last ``max_forecasts`` workflows)."""

    def __init__(self, config: ReporterConfig = ReporterConfig(), *, client=None) -> None:
        self.config = config
        self._client = client or PbkvClient(
            config.target, tenant=config.tenant, token=config.token, timeout_s=config.timeout_s
        )
        self._queue: collections.deque[_Event] = collections.deque()
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(("queued", "sent", "failed", "dropped_full"), 0)
        self._counts["dropped_down"] = 0
        self._in_flight = 0
        self._forecasts: collections.OrderedDict[str, Forecast] = collections.OrderedDict()
        self._closing = False
        self._down_until = 0.0
        self._backoff_s = config.down_backoff_s
        self._thread = threading.Thread(target=self._send_loop, name="pbkv-reporter", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the orchestrator's side
    def start_workflow(self, workflow_id: str, app: str, *, task: str = "", now_s=None) -> bool:
        return self._put("start", workflow_id, app=app, task=task, now_s=now_s)

    def step_started(self, workflow_id: str, agent: str, *, now_s: float | None = None) -> bool:
        return self._put("step_started", workflow_id, agent=agent, now_s=now_s)

    def step_finished(self, workflow_id: str, agent: str, **fields: Any) -> bool:
        """``fields`` as ``PbkvClient.step_finished`` takes them (output_text, start_s, ...)."""
        return self._put("step_finished", workflow_id, agent=agent, **fields)

    def end_workflow(self, workflow_id: str, *, now_s: float | None = None) -> bool:
        return self._put("end", workflow_id, now_s=now_s)

    def latest_forecast(self, workflow_id: str) -> Forecast | None:
        with self._cond:
            return self._forecasts.get(workflow_id)

    def stats(self) -> ReporterStats:
        with self._cond:
            waiting = len(self._queue)
            return ReporterStats(**self._counts, waiting=waiting, pending=waiting + self._in_flight)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is sent or dropped; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to ``timeout_s``), stop the sender, close the channel."""
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self._client.close()

    def __enter__(self) -> WorkflowReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _put(self, kind: str, workflow_id: str, **fields: Any) -> bool:
        with self._cond:
            if self._closing or len(self._queue) >= self.config.max_queue:
                self._counts["dropped_full"] += 1
                return False
            self._queue.append(_Event(kind, workflow_id, fields))
            self._counts["queued"] += 1
            self._cond.notify()
        return True

    # ------------------------------------------------------------------ the sender thread
    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                event = self._queue.popleft()
                self._in_flight = 1
            try:
                outcome = self._send(event)
            finally:
                with self._cond:
                    self._counts[outcome] += 1
                    self._in_flight = 0
                    self._cond.notify_all()

    def _send(self, event: _Event) -> str:
        if time.monotonic() < self._down_until:
            return "dropped_down"
        try:
            forecast = self._call(event)
        except PbkvError as exc:
            if exc.code in _DOWN_CODES:
                self._down_until = time.monotonic() + self._backoff_s
                self._backoff_s = min(2 * self._backoff_s, self.config.down_backoff_max_s)
            log.debug("pbkv %s for %r failed: %s", event.kind, event.workflow_id, exc)
            return "failed"
        self._backoff_s = self.config.down_backoff_s
        if forecast is not None:
            with self._cond:
                self._forecasts[event.workflow_id] = forecast
                self._forecasts.move_to_end(event.workflow_id)
                while len(self._forecasts) > self.config.max_forecasts:
                    self._forecasts.popitem(last=False)
        return "sent"

    def _call(self, event: _Event) -> Forecast | None:
        wid, f = event.workflow_id, event.fields
        if event.kind == "start":
            self._client.start_workflow(wid, f["app"], task=f["task"], now_s=f["now_s"])
        elif event.kind == "step_started":
            self._client.step_started(wid, f["agent"], now_s=f["now_s"])
        elif event.kind == "step_finished":
            fields = dict(f)
            return self._client.step_finished(wid, fields.pop("agent"), **fields)
        else:
            assert event.kind == "end", event.kind
            self._client.end_workflow(wid, now_s=f["now_s"])
        return None
