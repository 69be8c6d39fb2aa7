"""The follower's reader thread: blocking XREADs of the followed streams, off the event loop.

A tail XREAD that Redis answers at once used to wait for the replica's busy event loop
(Session batches, plans) before its records were applied. Here a thread of its own, with a
synchronous client, reads the streams, decodes each entry (``decode_outlook``) and hands the
loop one ``Batch`` per read (``loop.call_soon_threadsafe``); the loop applies it in one
callback. Every exactly-once rule stays with the loop (``follower``): the reader only reads
ahead, from a ``ReadPlan`` the loop hands it, and the loop drops what it cannot use::

    loop    plan(ReadPlan(gen, kind, {p: applied[p]}))  ->  thread: cursors := the plan's
    thread  XREAD BLOCK from the cursors -> decode -> cursors := last ids read
            -> call_soon_threadsafe(Batch(gen, {p: cursor read after}, records))
    loop    a batch of an older plan, or not contiguous with ``applied[p]``: dropped

At most ``MAX_PENDING`` batches are out (read, not yet applied or dropped by the loop): a
semaphore the thread takes before each read, so a loop that falls behind stops the reads
(back-pressure), not grows memory. On a single Redis the thread's XREAD blocks on one
connection of its own, which ``unblock`` (the loop, after a new plan, or ``close``) wakes with
``CLIENT UNBLOCK``; on a Redis Cluster it polls (``clients.xread_streams``). ``close`` stops the
thread, wakes it and joins it; the thread closes its client on the way out. ``start`` lowers
the interpreter's switch interval (``SWITCH_INTERVAL_S``): the thread gives the GIL up at each
system call and would otherwise wait up to 5 ms for the busy loop to hand it back, each time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from pbkv.service.cluster.clients import ERRORS, is_cluster, sync_client, xread_streams
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.cluster.outlook import OutlookRecord, decode_outlook
from pbkv.service.stores.base import StoreError
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

READ_COUNT = 1_000  # entries per stream per XREAD
BLOCK_MS = 500  # a blocking XREAD waits at most this long (also: how late a stop may be seen)
POLL_S = 0.02  # on a Redis Cluster: the pause after a round of reads that found nothing
TAIL_PAUSE_S = 0.01  # after a read that returned a few records: let the next gather more
TAIL_FULL = 64  # records of a read that needs no pause (under load, reads gather by themselves)
FINISHED_PAUSE_S = 0.05  # the same when reading finished streams (learning only)
ERROR_PAUSE_S = 0.5  # after a failed read
MAX_PENDING = 4  # batches read and not yet taken by the loop
# The interpreter's thread switch interval while a reader runs (CPython's default: 5 ms). Every
# system call of the thread (the XREAD's send and recv, the loop's wake-up write, a pause)
# gives the GIL up; getting it back from a busy event loop takes up to one interval, several
# times per read. Lowered, a read waits less for the loop's Python code (the recorder's
# thread, writing the log, gains the same). Measured in docs/cluster.md (5 ms vs 0.5 ms).
SWITCH_INTERVAL_S = 0.0005


class ReadPlan(NamedTuple):
    """What to read: ``outlooks`` (else finished) streams, each partition after a seq."""

    gen: int
    outlooks: bool
    after: dict[int, int]  # partition -> last sequence number the loop holds


class Batch(NamedTuple):
    gen: int  # the plan it was read under
    spans: dict[int, tuple[int, int]]  # partition -> (read after seq, read through seq)
    records: list[OutlookRecord]  # per partition in stream order (undecodable ones left out)
    read_s: float  # monotonic: when the read returned (hand-over delay = apply - this)


class TailReader:
    """Reads the streams ``plan`` names on a thread; ``deliver(batch)`` runs on ``loop``."""

    def __init__(
        self,
        url: str,
        keys: ClusterKeys,
        deliver: Callable[[Batch], None],
        loop: asyncio.AbstractEventLoop,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.keys = keys
        self._client = sync_client(url, BLOCK_MS / 1000 + 5.0, single_connection=True)
        self._blocking = not is_cluster(url)
        self._deliver, self._loop = deliver, loop
        self._plan: ReadPlan | None = None
        self._stop = threading.Event()
        self._slots = threading.Semaphore(max_pending)
        self.client_id: int | None = None  # the blocking connection's (CLIENT UNBLOCK)
        # Written by the thread alone (the loop reads them for stats).
        self.counters = {
            "reads": 0,
            "read_wait_s": 0.0,
            "handed": 0,  # batches handed to the loop
            "decode_cpu_s": 0.0,
            "undecodable": 0,
            "backpressure_waits": 0,
        }
        self._errors = ThrottledLog(log, "pbkv cluster outlook reader")
        self._thread = threading.Thread(target=self._run, name="pbkv-outlook-reader", daemon=True)

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def plan(self, plan: ReadPlan) -> None:
        """Read ``plan`` from the next read on (one attribute store: atomic)."""
        self._plan = plan

    async def unblock(self, client) -> None:
        """Wake a blocking XREAD now (``client``: an asyncio client of the same Redis), so a
        new plan or a stop takes effect at once rather than after ``BLOCK_MS``."""
        if self._blocking and self.client_id is not None:
            await client.client_unblock(self.client_id)

    async def close(self, client) -> None:
        self._stop.set()
        self._slots.release()  # a thread waiting for a slot sees the stop
        if self._thread.is_alive():
            try:
                await self.unblock(client)
            except ERRORS as exc:
                log.warning("outlook reader: unblock failed: %s", exc)
            await asyncio.to_thread(self._thread.join, BLOCK_MS / 1000 + 5.0)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        gen, cursors, names = None, {}, {}
        try:
            while not self._stop.is_set():
                plan = self._plan
                if plan is None or not plan.after:
                    self._stop.wait(POLL_S)
                    continue
                if plan.gen != gen:
                    gen, cursors, names = plan.gen, dict(plan.after), self._names(plan)
                if not self._slots.acquire(timeout=BLOCK_MS / 1000):
                    self.counters["backpressure_waits"] += 1
                    continue
                try:
                    n = self._read_and_hand(plan, cursors, names)
                except Exception as exc:  # noqa: BLE001 - a dead thread would stop the tail
                    self._errors.failed("read", exc)
                    self._stop.wait(ERROR_PAUSE_S)
                    n = 0
                if n is None:
                    return  # the loop is closed
                if n == 0:
                    self._slots.release()
                if pause := self._pause(plan, n):
                    self._stop.wait(pause)
        finally:
            self._client.close()

    def _pause(self, plan: ReadPlan, n: int) -> float:
        """After a read of ``n`` entries: a pause lets the next read carry more."""
        if n == 0:
            return 0.0 if self._blocking else POLL_S
        if not plan.outlooks:
            return FINISHED_PAUSE_S
        return TAIL_PAUSE_S if n < TAIL_FULL else 0.0

    def _names(self, plan: ReadPlan) -> dict[str, int]:
        stream = self.keys.outlook if plan.outlooks else self.keys.finished
        return {stream(p): p for p in plan.after}

    def _read_and_hand(self, plan: ReadPlan, cursors: dict[int, int], names: dict[str, int]):
        """One read from ``cursors`` (advanced past what it returned) and its batch handed
        to the loop; returns the entries read (None: the loop is gone)."""
        streams = {key: f"{cursors[p]}-0" for key, p in names.items()}
        try:
            if self._blocking and self.client_id is None:
                self.client_id = self._client.client_id()
            asked = time.monotonic()
            reply = xread_streams(self._client, streams, READ_COUNT, BLOCK_MS)
        except ERRORS as exc:
            self.client_id = None  # a new connection next time
            self._errors.failed("read", exc)
            self._stop.wait(ERROR_PAUSE_S)
            return 0
        self.counters["reads"] += 1
        self.counters["read_wait_s"] += time.monotonic() - asked
        read_s, began = time.monotonic(), time.thread_time()
        spans, records, n = {}, [], 0
        for key, entries in reply:
            p = names[key.decode() if isinstance(key, bytes) else key]
            for entry_id, fields in entries:
                try:
                    records.append(decode_outlook(p, entry_id, fields))
                except StoreError as exc:
                    self.counters["undecodable"] += 1
                    self._errors.failed(f"partition {p}", exc)
            through = int(entries[-1][0].decode().split("-")[0])
            spans[p], cursors[p] = (cursors[p], through), through
            n += len(entries)
        self.counters["decode_cpu_s"] += time.thread_time() - began
        if n == 0:
            return 0
        try:
            self._loop.call_soon_threadsafe(self._hand, Batch(plan.gen, spans, records, read_s))
        except RuntimeError:
            return None
        self.counters["handed"] += 1
        return n

    def _hand(self, batch: Batch) -> None:
        """On the loop: deliver, then free the batch's slot."""
        try:
            self._deliver(batch)
        finally:
            self._slots.release()
