"""The embedded default store: one SQLite file, no server.

Durability: WAL journal with ``synchronous=FULL``, so every commit fsyncs the WAL before
``append`` returns -- an acknowledged event survives a crash of the process *and* of the
machine. (``NORMAL`` would survive a process crash only; FULL costs one fsync per commit, and
the service's recorder groups concurrent events into one commit, so the cost is per batch.)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pbkv.service.records import EventRecord, decode, encode
from pbkv.service.stores.base import StoreError, TraceStore

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    tenant TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    at_s REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_PAGE = 5_000


class SqliteStore(TraceStore):
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.is_dir():
            raise StoreError(f"store_path {self.path}: folder {self.path.parent} does not exist")
        try:
            # The service writes from one recorder thread and reads at start-up; the lock
            # makes any other use safe too.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"store_path {self.path}: schema version {row[0]}, "
                    f"this pbkv reads {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store_path {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def append(self, events: Sequence[EventRecord]) -> list[int]:
        if not events:
            return []
        rows = [(e.kind, e.tenant, e.workflow_id, e.at_s, encode(e.event)) for e in events]
        with self._lock:
            try:
                cur = self._conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                cur.executemany(
                    "INSERT INTO events (kind, tenant, workflow_id, at_s, payload) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                # One writer inside BEGIN IMMEDIATE: AUTOINCREMENT gave the rows consecutive
                # seqs, ending at the last one inserted.
                last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
                seqs = list(range(last - len(rows) + 1, last + 1))
                cur.execute("COMMIT")  # fsync of the WAL (synchronous=FULL)
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"sqlite {self.path}: append failed: {exc}") from exc
        return seqs

    def events(self, after_seq: int = 0) -> Iterator[EventRecord]:
        last = after_seq
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, kind, tenant, workflow_id, at_s, payload FROM events "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, _PAGE),
                ).fetchall()
            for seq, kind, tenant, wid, at_s, payload in rows:
                try:
                    event = decode(kind, payload)
                except ValueError as exc:
                    raise StoreError(f"sqlite {self.path}: event {seq}: {exc}") from exc
                yield EventRecord(tenant, wid, at_s, event, seq)
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
