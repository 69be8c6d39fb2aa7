"""Engine side of the ``EngineLink.Attach`` stream: a client that never blocks its caller.

An engine (the vLLM connector, the simulated engine in service mode) calls ``send(event)`` from
its scheduler loop and reads ``latest_plan()`` before allocating. Everything else happens on
one background thread::

    engine thread                 background thread               pbkv service
    send(e) --> outbox (bounded, --> hello, batches of events ---> Attach
                drops oldest)                                        |
    latest_plan() <-- plan slot <-- CachePlan stream <--------------'
                      (latest wins)

Fail open: while the service is unreachable events are dropped oldest-first (and counted), the
thread reconnects with exponential backoff, and ``latest_plan()`` returns ``None`` once the
last plan is older than ``max_plan_age_s`` -- the engine then runs plain LRU.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from pbkv.cache_manager.events import CachePlan, EngineEvent
from pbkv.service.client import grpc_target
from pbkv.service.convert import event_to_pb, plan_from_pb
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

TAKEN_OVER = "taken over by a newer attach"  # in the service's ABORTED message


@dataclass(frozen=True, slots=True)
class EngineLinkConfig:
    target: str = "127.0.0.1:50151"  # or several replicas of a cluster, comma-separated
    engine_id: str = "engine-0"
    gpu_blocks: int = 0
    cpu_blocks: int = 0
    tokens_per_block: int = 16
    outbox_capacity: int = 65_536  # events; beyond it the oldest are dropped
    max_batch: int = 1_024  # events per EngineMessage
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 5.0
    max_plan_age_s: float | None = 30.0  # None: a plan never goes stale
    token: str | None = None  # bearer token, when the service requires one
    tls_ca_file: Path | None = None  # PEM roots: connect with TLS

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise ValueError("engine_id must not be empty")
        for name in ("gpu_blocks", "cpu_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("tokens_per_block", "outbox_capacity", "max_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        if self.max_plan_age_s is not None and self.max_plan_age_s <= 0:
            raise ValueError(f"max_plan_age_s must be > 0, got {self.max_plan_age_s}")


@dataclass(frozen=True, slots=True)
class EngineLinkStats:
    connected: bool
    events_sent: int
    events_dropped: int
    plans_received: int
    connects: int
    outbox_len: int
    duplicate_id: bool = False  # another engine took this id over: the link has stopped


class EngineLinkClient:
    """Background-thread Attach client. ``send`` and ``latest_plan`` never block on the
    network (they take one short lock); use as a context manager or call ``close()``."""

    def __init__(
        self, config: EngineLinkConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._cond = threading.Condition()
        self._outbox: collections.deque[EngineEvent] = collections.deque()
        self._plan: CachePlan | None = None
        self._plan_at: float | None = None
        self._closed = False
        self._duplicate = False  # set when the service says another engine has our id
        self._connected = False
        self._sent = self._dropped = self._plans = self._connects = 0
        # Each Attach stream gets a generation; a dead stream's request generator (still
        # parked in gRPC's sender thread) sees the bump and stops instead of eating events.
        self._generation = 0
        # Barrier tokens (see ``sync``): issued, put on the wire, echoed back by a plan.
        self._sync_issued = self._sync_sent = self._sync_acked = 0
        self._channel: grpc.Channel | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"pbkv-link-{config.engine_id}", daemon=True
        )
        self._thread.start()

    # -------------------------------------------------------------- engine-facing (non-blocking)
    def send(self, event: EngineEvent) -> None:
        self.send_many((event,))

    def send_many(self, events: Iterable[EngineEvent]) -> None:
        with self._cond:
            if self._closed:
                return
            for event in events:
                if len(self._outbox) >= self.config.outbox_capacity:
                    self._outbox.popleft()  # drop the oldest: newer events matter more
                    self._dropped += 1
                self._outbox.append(event)
            self._cond.notify()

    def latest_plan(self) -> CachePlan | None:
        """The newest plan, or ``None`` when there is none or it is older than
        ``max_plan_age_s`` (the engine then falls back to LRU)."""
        with self._cond:
            plan, at = self._plan, self._plan_at
        max_age = self.config.max_plan_age_s
        if plan is None or (max_age is not None and self._clock() - at > max_age):
            return None
        return plan

    def sync(self, timeout_s: float) -> bool:
        """Wait until a plan computed after every event sent so far has arrived. For
        simulated engines (their clock stands still meanwhile) and tests; a real engine never
        calls it. False when the service does not answer within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self._connected:
                return False
            self._sync_issued += 1
            token = self._sync_issued
            self._cond.notify_all()
            while self._sync_acked < token:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def stats(self) -> EngineLinkStats:
        with self._cond:
            return EngineLinkStats(
                self._connected,
                self._sent,
                self._dropped,
                self._plans,
                self._connects,
                len(self._outbox),
                self._duplicate,
            )

    def wait_connected(self, timeout_s: float) -> bool:
        """For tests and start-up logs only; engines should never wait."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._connected and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._connected

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (handed to gRPC); for tests and shutdown."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            channel = self._channel
        if channel is not None:
            channel.close()
        self._thread.join(timeout_s)

    def __enter__(self) -> EngineLinkClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- background thread
    def _run(self) -> None:
        backoff = self.config.reconnect_initial_s
        while not self._is_closed():
            started = time.monotonic()
            self._attach_once()
            if self._is_closed():
                break
            # A stream that lived a while resets the backoff; a failing one doubles it.
            if time.monotonic() - started > 1.0:
                backoff = self.config.reconnect_initial_s
            with self._cond:
                self._cond.wait_for(lambda: self._closed, timeout=backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_s)

    def _is_closed(self) -> bool:
        with self._cond:
            return self._closed

    def _open_channel(self) -> grpc.Channel:
        cfg = self.config
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
        target = grpc_target(cfg.target)  # several replicas: the channel moves between them
        if cfg.tls_ca_file is None:
            return grpc.insecure_channel(target, options=options)
        creds = grpc.ssl_channel_credentials(root_certificates=cfg.tls_ca_file.read_bytes())
        return grpc.secure_channel(target, creds, options=options)

    def _attach_once(self) -> None:
        cfg = self.config
        channel = self._open_channel()
        with self._cond:
            if self._closed:
                channel.close()
                return
            self._channel = channel
            generation = self._generation
        metadata = (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None
        try:
            stub = pb_grpc.EngineLinkStub(channel)
            responses = stub.Attach(self._requests(generation), metadata=metadata)
            last_seq: int | None = None  # repeats are only defined within one stream
            for msg in responses:
                repeat = msg.seq == last_seq
                last_seq = msg.seq
                plan = self._plan if repeat else plan_from_pb(msg)
                with self._cond:
                    if msg.sync > self._sync_acked:
                        self._sync_acked = msg.sync
                        self._cond.notify_all()  # sync() waiters
                    if not self._connected:
                        self._connected = True
                        self._connects += 1
                        self._cond.notify_all()
                    self._plan, self._plan_at = plan, self._clock()
                    self._plans += 1
        except grpc.RpcError as exc:
            if self._taken_over(exc):
                self._stop_as_duplicate()
            # else: service gone or refused us: reconnect with backoff (fail open)
        finally:
            with self._cond:
                self._generation += 1
                # A barrier token sent on the stream that ended may never be answered: the
                # next stream sends it again (an engine's plans can move to another replica).
                self._sync_sent = self._sync_acked
                self._connected = False
                self._channel = None
                self._cond.notify_all()
            channel.close()

    @staticmethod
    def _taken_over(exc: grpc.RpcError) -> bool:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        return code == grpc.StatusCode.ABORTED and TAKEN_OVER in details

    def _stop_as_duplicate(self) -> None:
        """Another engine attached with our id. Reconnecting would take it back and the two
        would wipe each other's directory on every attach: stop, drop the plan (the engine
        runs plain LRU) and say so once."""
        with self._cond:
            self._duplicate = self._closed = True
            self._plan = self._plan_at = None
            self._outbox.clear()
            self._cond.notify_all()
        log.error(
            "engine id %r is used by another engine (the service ended this link: "
            "taken over by a newer attach); the link has stopped and this engine runs "
            "without plans (LRU). Give each engine its own engine_id.",
            self.config.engine_id,
        )

    def _requests(self, generation: int) -> Iterator[pb.EngineMessage]:
        """Consumed by gRPC's sender thread: the hello, then batches from the outbox."""
        cfg = self.config
        yield pb.EngineMessage(
            hello=pb.AttachRequest(
                engine_id=cfg.engine_id,
                gpu_blocks=cfg.gpu_blocks,
                cpu_blocks=cfg.cpu_blocks,
                tokens_per_block=cfg.tokens_per_block,
            )
        )
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._outbox
                        or self._closed
                        or self._generation != generation
                        or self._sync_issued > self._sync_sent
                    ),
                    timeout=1.0,
                )
                if self._closed or self._generation != generation:
                    return
                batch = [
                    self._outbox.popleft() for _ in range(min(len(self._outbox), cfg.max_batch))
                ]
                dropped = self._dropped
                sync = 0
                # A token rides on the batch that empties the outbox: every event queued
                # before the token was issued is then in this message or an earlier one.
                if not self._outbox and self._sync_issued > self._sync_sent:
                    sync = self._sync_sent = self._sync_issued
                self._cond.notify_all()  # flush() waiters
            if batch or sync:
                yield pb.EngineMessage(
                    events=[event_to_pb(e) for e in batch], events_dropped=dropped, sync=sync
                )
                with self._cond:
                    self._sent += len(batch)
