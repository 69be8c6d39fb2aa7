"""Group commit in front of a trace store, for the asyncio server.

Handlers call ``record(event)`` (no await between their manager update and this call, so the
log's order is the order the manager saw) and await the returned future before answering.
One writer task drains the queue into ``store.append`` on a dedicated thread; events that
arrive while a commit is running go into the next commit together, so the fsync cost is paid
per batch, not per event. The queue is bounded: a full queue is a flood and the caller answers
RESOURCE_EXHAUSTED instead of growing memory.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pbkv.service.stores.base import EventRecord, StoreError, TraceStore


class RecorderFull(RuntimeError):
    """More than ``max_pending`` events are waiting for the store."""


@dataclass(frozen=True, slots=True)
class RecorderStats:
    recorded: int
    commits: int
    pending: int
    failed: int


class Recorder:
    def __init__(self, store: TraceStore, max_pending: int, max_batch: int = 2_048) -> None:
        self.store = store
        self.max_pending, self.max_batch = max_pending, max_batch
        self._queue: list[tuple[EventRecord, asyncio.Future[int]]] = []
        self._inflight = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pbkv-store")
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recorded = self._commits = self._failed = 0

    def start(self) -> None:
        # Kept: ``asyncio.get_running_loop`` costs a getpid() system call (Python 3.11) and
        # ``record`` runs once per event.
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="pbkv-recorder")

    def record(self, event: EventRecord) -> asyncio.Future[int]:
        if self._task is None or self._task.done():
            raise StoreError("the recorder is not running")
        if len(self._queue) + self._inflight >= self.max_pending:
            raise RecorderFull(
                f"{self.max_pending} events already wait for the store (max_pending_events)"
            )
        future: asyncio.Future[int] = self._loop.create_future()
        queue = self._queue
        queue.append((event, future))
        if len(queue) == 1:  # was empty: the writer may be waiting (else it is draining)
            self._idle.clear()
            self._wakeup.set()
        return future

    @property
    def pending(self) -> int:
        return len(self._queue) + self._inflight

    def stats(self) -> RecorderStats:
        return RecorderStats(
            self._recorded, self._commits, len(self._queue) + self._inflight, self._failed
        )

    async def wait_idle(self) -> None:
        """Wait until everything queued so far is committed (or failed)."""
        await self._idle.wait()

    async def drain(self) -> None:
        """Wait until everything queued so far is committed, then stop the writer."""
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._inflight = len(batch)
                try:
                    seqs = await loop.run_in_executor(
                        self._executor, self.store.append, [e for e, _ in batch]
                    )
                except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                    self._failed += len(batch)
                    error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    self._commits += 1
                    self._recorded += len(batch)
                    for (_, future), seq in zip(batch, seqs, strict=True):
                        if future.done():
                            continue
                        if isinstance(seq, StoreError):  # this event only (a fenced partition)
                            self._failed += 1
                            future.set_exception(seq)
                        else:
                            future.set_result(seq)
                finally:
                    self._inflight = 0
            self._idle.set()
