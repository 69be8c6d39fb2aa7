"""Group commit: concurrent events share commits, order is kept, floods are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pbkv.service.recorder import Recorder, RecorderFull
from pbkv.service.records import EventRecord, StepFinished
from pbkv.service.stores.base import StoreError
from pbkv.service.stores.sqlite_store import SqliteStore


def ev(i: int) -> EventRecord:
    return EventRecord("default", f"w{i % 7}", float(i), StepFinished("a", step_index=i))


def test_concurrent_events_are_committed_in_order_in_few_commits(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        rec = Recorder(SqliteStore(tmp_path / "s.sqlite3"), max_pending=1_000)
        rec.start()
        futures = [rec.record(ev(i)) for i in range(500)]
        seqs = await asyncio.gather(*futures)
        commits = rec.stats().commits
        await rec.drain()
        return seqs, commits

    seqs, commits = asyncio.run(main())
    assert seqs == list(range(1, 501))
    assert commits == 1  # all 500 were queued before the writer ran: one fsync
    store = SqliteStore(tmp_path / "s.sqlite3")
    assert [e.event.step_index for e in store.events()] == list(range(500))


def test_a_flood_is_refused_not_queued(tmp_path: Path) -> None:
    async def main() -> None:
        rec = Recorder(SqliteStore(tmp_path / "s.sqlite3"), max_pending=3)
        rec.start()
        futures = [rec.record(ev(i)) for i in range(3)]
        with pytest.raises(RecorderFull, match="max_pending_events"):
            rec.record(ev(3))
        await asyncio.gather(*futures)
        await rec.record(ev(4))  # room again once committed
        await rec.drain()

    asyncio.run(main())


def test_store_failures_reach_every_waiter(tmp_path: Path) -> None:
    class BrokenStore(SqliteStore):
        def append(self, events):
            raise StoreError("disk full")

    async def main() -> None:
        rec = Recorder(BrokenStore(tmp_path / "s.sqlite3"), max_pending=10)
        rec.start()
        results = await asyncio.gather(rec.record(ev(0)), rec.record(ev(1)), return_exceptions=True)
        assert [str(r) for r in results] == ["disk full", "disk full"]
        assert rec.stats().failed == 2
        await rec.drain()

    asyncio.run(main())
