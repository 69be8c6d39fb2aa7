"""Both trace stores behind the one interface, against real SQLite files, a real Redis and a
real Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkv.service.config import ServiceConfig
from pbkv.service.records import PromptPart, StepFinished, WorkflowEnded, WorkflowStarted
from pbkv.service.stores import STORES, EventRecord, StoreError, open_store
from pbkv.service.stores.redis_store import RedisStore
from pbkv.service.stores.sqlite_store import SqliteStore


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store(request, tmp_path: Path) -> Iterator:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "t.sqlite3")
        yield s
        s.close()
    else:
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
        else:  # a real 3-master + 3-replica cluster (tests/redis_cluster.py)
            url = request.getfixturevalue("redis_cluster").url
        s = RedisStore(url, prefix=f"pbkv-test-{uuid.uuid4().hex}")
        yield s
        s.clear()
        s.close()


KINDS = {
    "start": lambda: WorkflowStarted("app"),
    "end": WorkflowEnded,
    "step_finished": lambda: StepFinished("agent"),
}


def ev(kind: str, wid: str, tenant: str = "default", event=None) -> EventRecord:
    return EventRecord(tenant, wid, 1.0, event if event is not None else KINDS[kind]())


def test_append_assigns_increasing_seqs_and_reads_back_in_order(store) -> None:
    finished = StepFinished(
        "plan",
        "g",
        3,
        "ctx",
        "out",
        7,
        8,
        1.5,
        2.5,
        "review",
        (PromptPart("system:plan", 32), PromptPart("new", 4)),
    )
    first = store.append(
        [
            ev("start", "w1", event=WorkflowStarted("a", "t", 0.5)),
            ev("step_finished", "w1", event=finished),
        ]
    )
    second = store.append([ev("end", "w1", event=WorkflowEnded(None))])
    assert first == [1, 2] and second == [3]
    got = list(store.events())
    assert [(e.seq, e.kind, e.workflow_id, e.event) for e in got] == [
        (1, "start", "w1", WorkflowStarted("a", "t", 0.5)),
        (2, "step_finished", "w1", finished),
        (3, "end", "w1", WorkflowEnded(None)),
    ]
    assert [e.seq for e in store.events(after_seq=2)] == [3]
    assert store.append([]) == []


def test_active_events_leave_out_ended_workflows_and_old_runs(store) -> None:
    store.append(
        [
            ev("start", "w1"),
            ev("start", "w2"),
            ev("start", "w1", tenant="t2"),
            ev("step_finished", "w1"),
            ev("end", "w2"),
            ev("step_finished", "w2", tenant="default"),
        ]
    )
    # w2 ended (its late event belongs to the ended run); the tenant t2's "w1" is separate.
    active = [(e.seq, e.tenant, e.workflow_id, e.kind) for e in store.active_events()]
    assert active == [
        (1, "default", "w1", "start"),
        (3, "t2", "w1", "start"),
        (4, "default", "w1", "step_finished"),
    ]


def test_paging_reads_every_event(store) -> None:
    store.append(
        [ev("step_finished", "w", event=StepFinished("a", step_index=i)) for i in range(12_001)]
    )
    seqs = [e.seq for e in store.events()]
    assert seqs == list(range(1, 12_002))


def test_sqlite_store_survives_reopen_and_names_bad_paths(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = SqliteStore(path)
    s.append([ev("start", "w1", event=WorkflowStarted("a"))])
    s.close()
    s = SqliteStore(path)
    assert [e.event for e in s.events()] == [WorkflowStarted("a")]
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(tmp_path / "missing" / "s.sqlite3")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=str(garbage)):
        SqliteStore(garbage)


def test_store_registry_names_the_known_stores(tmp_path: Path) -> None:
    assert STORES.names() == ["redis", "sqlite"]
    with pytest.raises(ValueError, match="unknown store 'mongo'; known: redis, sqlite"):
        open_store(ServiceConfig(store="mongo"))
    s = open_store(ServiceConfig(store_path=tmp_path / "x.sqlite3"))
    assert s.describe() == f"sqlite:{tmp_path / 'x.sqlite3'}"
    s.close()


def test_redis_store_refuses_an_unreachable_server() -> None:
    with pytest.raises(StoreError, match="redis_url redis://127.0.0.1:1/0"):
        RedisStore("redis://127.0.0.1:1/0", timeout_s=0.5)


def test_ended_workflows_keeps_the_latest_runs_oldest_first(store) -> None:
    store.append(
        [
            ev("start", "a"),
            ev("end", "a"),
            ev("start", "b"),
            ev("end", "b"),
            ev("start", "c"),
            ev("end", "c"),
            ev("start", "a"),
        ]
    )
    # "a" was restarted after it ended, so only b and c count as ended; limit keeps the newest.
    assert store.ended_workflows(limit=10) == [("default", "b"), ("default", "c")]
    assert store.ended_workflows(limit=1) == [("default", "c")]
