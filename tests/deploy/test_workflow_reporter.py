"""``WorkflowReporter`` against a real ``pbkv serve``: events arrive in order; a dead, hung or
refusing pbkv is counted, never raised, and never makes the caller wait."""

from __future__ import annotations

import socket
import time

import pytest
from langgraph_support import pbkv_serve

from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter
from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.stores.sqlite_store import SqliteStore
from pbkv.trace import Segment, Step, Workflow


def stored(path) -> list[tuple]:
    """(workflow, kind, agent or app) of every event in the trace store, in order."""
    store = SqliteStore(path)
    try:
        out = []
        for rec in store.events():
            name = getattr(rec.event, "agent", None) or getattr(rec.event, "app", None)
            out.append((rec.workflow_id, rec.kind, name))
        return out
    finally:
        store.close()


def test_a_workflow_arrives_in_order_with_its_fields(tmp_path) -> None:
    with (
        pbkv_serve(tmp_path / "t.sqlite3") as (_, target),
        WorkflowReporter(ReporterConfig(target=target)) as reporter,
    ):
        reporter.start_workflow("w1", "coder-loop", task="snake", now_s=100.0)
        reporter.step_started("w1", "planner", now_s=100.5)
        reporter.step_finished(
            "w1", "planner", output_text="plan", start_s=100.5, end_s=101.0, output_tokens=3
        )
        reporter.end_workflow("w1", now_s=101.5)
        assert reporter.flush(timeout_s=30)
        stats = reporter.stats()
    events = list(SqliteStore(tmp_path / "t.sqlite3").events())
    assert (stats.queued, stats.sent, stats.failed, stats.pending) == (4, 4, 0, 0)
    assert [e.kind for e in events] == ["start", "step_started", "step_finished", "end"]
    start, _, finished, end = (e.event for e in events)
    assert (start.app, start.task, start.now_s) == ("coder-loop", "snake", 100.0)
    assert (finished.agent, finished.output_text, finished.output_tokens) == ("planner", "plan", 3)
    assert (finished.start_s, finished.end_s, end.now_s) == (100.5, 101.0, 101.5)


def test_the_forecast_a_step_brings_back_is_kept_per_workflow(tmp_path) -> None:
    agents = ["planner", "coder", "reviewer"]
    train = [
        Workflow(f"t{i}", "app", tuple(Step(a, (Segment(f"sys:{a}", 32),), 8) for a in agents))
        for i in range(5)
    ]
    save_model(PREDICTORS.create("markov", workflows=train), tmp_path / "model", {"version": "1"})
    with (
        pbkv_serve(tmp_path / "t.sqlite3", "--model", str(tmp_path / "model")) as (_, target),
        WorkflowReporter(ReporterConfig(target=target)) as reporter,
    ):
        reporter.start_workflow("w", "app")
        assert reporter.flush(timeout_s=30) and reporter.latest_forecast("w") is None
        reporter.step_started("w", "planner")
        reporter.step_finished("w", "planner", output_text="plan")
        assert reporter.flush(timeout_s=30)
        assert reporter.stats().sent == 3
        forecast = reporter.latest_forecast("w")
    assert forecast.workflow_id == "w"
    assert max(forecast.agents, key=lambda a: a.p_next).agent == "coder"
    assert reporter.latest_forecast("other") is None


def test_a_refused_event_is_counted_and_the_next_ones_still_go(tmp_path) -> None:
    with (
        pbkv_serve(tmp_path / "t.sqlite3") as (_, target),
        WorkflowReporter(ReporterConfig(target=target)) as reporter,
    ):
        reporter.step_started("never-started", "coder")  # NOT_FOUND: not a "down" code
        reporter.start_workflow("w2", "app")
        reporter.end_workflow("w2")
        assert reporter.flush(timeout_s=30)
        stats = reporter.stats()
    assert (stats.sent, stats.failed, stats.dropped_down) == (2, 1, 0)
    assert stored(tmp_path / "t.sqlite3") == [("w2", "start", "app"), ("w2", "end", None)]


def test_a_dead_pbkv_costs_only_the_events(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reporter = WorkflowReporter(ReporterConfig(target=f"127.0.0.1:{port}", timeout_s=2.0))
    accepted = [reporter.step_started("w", "coder") for _ in range(200)]
    assert all(accepted)  # queued at once, nothing raised
    assert reporter.flush(timeout_s=60)
    stats = reporter.stats()
    reporter.close()
    # The first failure (UNAVAILABLE) opens a backoff: what follows is dropped unsent.
    assert stats.sent == 0 and stats.failed >= 1 and stats.dropped_full == 0
    assert stats.failed + stats.dropped_down == 200


def test_a_hung_pbkv_fills_the_queue_and_new_events_are_dropped() -> None:
    with socket.socket() as hole:  # accepts TCP connections, never speaks HTTP/2
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        target = f"127.0.0.1:{hole.getsockname()[1]}"
        reporter = WorkflowReporter(ReporterConfig(target=target, max_queue=3, timeout_s=60))
        # Step 1: the sender takes the first event and waits on its RPC (deadline 60 s).
        assert reporter.start_workflow("w", "app")
        deadline = time.monotonic() + 30
        while reporter.stats().waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        # Step 2: three more fill the queue; the fourth and fifth are dropped at once.
        results = [reporter.step_started("w", f"a{i}") for i in range(5)]
        stats = reporter.stats()
        reporter.close(timeout_s=0.1)
    assert results == [True, True, True, False, False]
    assert (stats.queued, stats.dropped_full, stats.waiting, stats.pending) == (4, 2, 3, 4)


@pytest.mark.parametrize(
    "field,value",
    [("timeout_s", 0), ("max_queue", 0), ("down_backoff_s", -1.0), ("max_forecasts", 0)],
)
def test_bad_reporter_configs_name_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        ReporterConfig(**{field: value})
