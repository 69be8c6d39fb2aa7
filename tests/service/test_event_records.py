"""Typed event records and their JSON codec: the stored format is the one the first service
version wrote as untyped payloads, so its SQLite files and Redis lists still load, rebuild
and export."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from pbkv.service.client import PbkvClient, PbkvError
from pbkv.service.config import ServiceConfig
from pbkv.service.export import finished_workflows
from pbkv.service.records import (
    EventRecord,
    PromptPart,
    StepFinished,
    StepStarted,
    WorkflowEnded,
    WorkflowStarted,
    decode,
    encode,
    from_payload,
)
from pbkv.service.server_thread import ServerThread
from pbkv.service.stores.base import StoreError
from pbkv.service.stores.redis_store import RedisStore
from pbkv.service.stores.sqlite_store import SqliteStore
from pbkv.trace import Segment

# Rows exactly as the previous version (untyped payload dicts) wrote them: (kind, workflow,
# payload JSON). "done" ran two steps and ended; "live" is still running after one step.
OLD_ROWS = [
    ("start", "done", '{"app":"app","task":"ship it","now_s":null}'),
    ("step_started", "done", '{"agent":"plan","parallel_group":null,"now_s":null}'),
    (
        "step_finished",
        "done",
        '{"agent":"plan","parallel_group":null,"step_index":0,"context_text":"ctx",'
        '"output_text":"o0","input_tokens":12,"output_tokens":5,"start_s":null,"end_s":null,'
        '"phase":null,"prompt":[]}',
    ),
    ("step_started", "done", '{"agent":"code","parallel_group":"g","now_s":3.0}'),
    (
        "step_finished",
        "done",
        '{"agent":"code","parallel_group":"g","step_index":1,"context_text":"",'
        '"output_text":"o1","input_tokens":0,"output_tokens":7,"start_s":3.0,"end_s":4.5,'
        '"phase":"impl","prompt":[{"id":"system:code","tokens":10},{"id":"new","tokens":2}]}',
    ),
    ("end", "done", '{"now_s":5.0}'),
    ("start", "live", '{"app":"app","task":"t","now_s":10.0}'),
    ("step_started", "live", '{"agent":"plan","parallel_group":null,"now_s":null}'),
    (
        "step_finished",
        "live",
        '{"agent":"plan","parallel_group":null,"step_index":0,"context_text":"",'
        '"output_text":"","input_tokens":0,"output_tokens":0,"start_s":null,"end_s":null,'
        '"phase":null,"prompt":[]}',
    ),
]
CODE_STEP = StepFinished(
    "code",
    "g",
    1,
    "",
    "o1",
    0,
    7,
    3.0,
    4.5,
    "impl",
    (PromptPart("system:code", 10), PromptPart("new", 2)),
)


def write_old_sqlite(path: Path) -> None:
    """The previous version's schema and rows, written without this version's code."""
    SqliteStore(path).close()  # same schema (version "1"): create it, then insert raw rows
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO events (kind, tenant, workflow_id, at_s, payload) "
            "VALUES (?, 'default', ?, 100.0, ?)",
            OLD_ROWS,
        )


def test_encode_writes_the_previous_versions_exact_json() -> None:
    for kind, _, text in OLD_ROWS:
        event = decode(kind, text)
        assert (type(event).KIND, encode(event)) == (kind, text)


def test_encode_is_json_dumps_of_the_payload_for_any_text_and_number() -> None:
    """The encoder built once writes what ``json.dumps`` writes: non-ASCII and control
    characters escaped, floats in their shortest form, nested prompt parts."""
    from pbkv.service.records import payload

    step = StepFinished(
        "cödér\u2028",
        None,
        3,
        'quote " and \\ and \n and \x01',
        "日本語 🚀",
        2**40,
        0,
        1e-7,
        1.5e300,
        "",
        (PromptPart("système", 1), PromptPart("", 0)),
    )
    for event in (step, CODE_STEP, StepStarted("a", "g", 0.1 + 0.2), WorkflowEnded(None)):
        assert encode(event) == json.dumps(payload(event), separators=(",", ":"))
        assert decode(type(event).KIND, encode(event)) == event


def test_old_sqlite_rows_load_as_typed_events_and_export(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_old_sqlite(path)
    store = SqliteStore(path)
    records = list(store.events())
    assert [r.seq for r in records] == list(range(1, 10))
    assert records[0] == EventRecord(
        "default", "done", 100.0, WorkflowStarted("app", "ship it", None), 1
    )
    assert records[3].event == StepStarted("code", "g", 3.0)
    assert records[4].event == CODE_STEP
    assert records[5].event == WorkflowEnded(5.0)
    [wf] = finished_workflows(records)
    assert (wf.workflow_id, wf.task, wf.agents, wf.arrival_s) == (
        "done",
        "ship it",
        ("plan", "code"),
        100.0,
    )
    assert wf.steps[0].prompt == (Segment("new", 12),)
    assert wf.steps[1].prompt == (Segment("system:code", 10), Segment("new", 2))
    assert (wf.steps[1].phase, wf.steps[1].start_s, wf.steps[1].output_text) == ("impl", 3.0, "o1")
    store.close()


def test_a_server_rebuilds_from_an_old_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_old_sqlite(path)
    cfg = ServiceConfig(port=0, http_port=None, store_path=path, watch_model_s=None)
    with ServerThread(cfg) as srv, PbkvClient(srv.target, timeout_s=10) as client:
        assert srv.server.rebuilt_workflows == 1
        [live] = client.list_workflows()
        assert (live.workflow_id, live.task, live.num_steps, live.last_agent, live.started_s) == (
            "live",
            "t",
            1,
            "plan",
            10.0,
        )
        client.step_started("live", "code")
        client.step_finished("live", "code", step_index=1)
        with pytest.raises(PbkvError) as info:
            client.step_started("done", "late")
        assert info.value.code.name == "FAILED_PRECONDITION"


def test_old_redis_entries_load(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"pbkv-test-{uuid.uuid4().hex}")
    try:
        # The previous version's Redis entry: the record's fields under one-letter keys.
        store._redis.rpush(
            store.key,
            *[
                json.dumps(
                    {"k": kind, "t": "acme", "w": wid, "a": 100.0, "p": json.loads(text)},
                    separators=(",", ":"),
                )
                for kind, wid, text in OLD_ROWS
            ],
        )
        records = list(store.events())
        assert [(r.tenant, r.kind) for r in records[:2]] == [
            ("acme", "start"),
            ("acme", "step_started"),
        ]
        assert records[4].event == CODE_STEP
        store.append([EventRecord("acme", "w", 1.0, CODE_STEP)])
        raw = json.loads(store._redis.lindex(store.key, -1))
        assert raw == {
            "k": "step_finished",
            "t": "acme",
            "w": "w",
            "a": 1.0,
            "p": json.loads(OLD_ROWS[4][2]),
        }
    finally:
        store.clear()
        store.close()


def test_missing_fields_take_defaults_and_unknown_ones_are_ignored() -> None:
    assert from_payload("start", {"app": "a"}) == WorkflowStarted("a", "", None)
    assert from_payload("step_finished", {"agent": "x", "future_field": 1}) == StepFinished("x")
    assert from_payload("end", {}) == WorkflowEnded(None)


def test_bad_rows_fail_with_a_store_error_naming_the_event(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        from_payload("paused", {})
    with pytest.raises(ValueError, match="step_started event.*agent"):
        from_payload("step_started", {"now_s": 1.0})
    with pytest.raises(ValueError, match="bad prompt"):
        from_payload("step_finished", {"agent": "a", "prompt": [{"id": "new"}]})
    path = tmp_path / "bad.sqlite3"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO events (kind, tenant, workflow_id, at_s, payload) "
            "VALUES ('start', 'default', 'w', 1.0, '{\"task\":\"no app\"}')"
        )
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="event 1: start event"):
        list(store.events())
    store.close()


def test_a_record_holds_only_workflow_events() -> None:
    with pytest.raises(ValueError, match="event must be one of start, step_started"):
        EventRecord("default", "w", 1.0, {"app": "a"})  # type: ignore[arg-type]
