"""A background thread that subscribes to a stock engine's KV-event stream (ZMQ SUB), decodes
each batch (``wire``), checks sequence numbers and hands batches over through a bounded queue.

Contract:

* ``endpoint`` is connected to, unless it binds (``tcp://*:PORT``, ``ipc://``, ``inproc://``):
  vLLM's publisher binds ``tcp://*:5557`` and connects when given a host, so the two sides
  pair either way.
* Sequence numbers: a subscriber that joins after batch 0 first asks the replay socket (when
  there is one) for the batches before the first one it sees, so a shadow started after the
  engine still sees the engine's recent history. A jump forward is a gap
  (batches dropped by the publisher's high-water mark or ours); with a ``replay_endpoint``
  (vLLM's ``replay_endpoint``, a ROUTER that resends its last ``buffer_steps`` batches from a
  given sequence number) the missing batches are asked for once, within ``replay_timeout_s``,
  and queued in order before the batch that revealed the gap; what still misses is counted in
  ``lost_batches``. A jump backward means the publisher restarted (its counter starts at 0 and
  its engine's cache is empty): counted in ``restarts`` and passed on as a batch holding one
  ``Cleared`` event before the new batch.
* A malformed message is counted (``malformed``) and logged through a ``ThrottledLog``; it
  never stops the thread. A full queue (``max_queued_batches``) drops the new batch and counts
  it (``dropped_batches``): the consumer sees a gap, the publisher is never slowed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import zmq

from pbkv.engine_adapter.shadow.wire import (
    END_SEQ,
    Cleared,
    DecodedBatch,
    WireError,
    WireLimits,
    decode_batch,
    decode_message,
    parse_seq,
)
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
POLL_MS = 100  # the thread notices stop() within this


@dataclass(frozen=True, slots=True)
class SubscriberConfig:
    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""
    limits: WireLimits = field(default_factory=WireLimits)
    max_queued_batches: int = 4_096
    replay_timeout_s: float = 2.0
    rcv_hwm: int = 100_000  # ZMQ's own receive buffer, in messages

    def __post_init__(self) -> None:
        for name in ("endpoint", "replay_endpoint"):
            value = getattr(self, name)
            if value is not None and "://" not in value:
                raise ValueError(f"shadow {name} {value!r} is not a ZMQ address (tcp://HOST:PORT)")
        if self.max_queued_batches <= 0 or self.rcv_hwm <= 0:
            raise ValueError("max_queued_batches and rcv_hwm must be > 0")
        if not self.replay_timeout_s > 0:
            raise ValueError(f"replay_timeout_s must be > 0, got {self.replay_timeout_s}")


def binds(endpoint: str) -> bool:
    """vLLM's rule: a wildcard host, ipc:// or inproc:// is bound, anything else connected."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KvEventSubscriber:
    """``start()``, then ``drain()`` batches from any thread; ``stop()`` joins the thread."""

    def __init__(self, config: SubscriberConfig, ctx: zmq.Context | None = None) -> None:
        self.config = config
        self._ctx = ctx or zmq.Context.instance()
        self._topic = config.topic.encode()
        self._queue: deque[DecodedBatch] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._expected: int | None = None
        self._bad = ThrottledLog(log, "pbkv shadow: KV-event message")
        self.counts = dict.fromkeys(
            (
                "received",
                "malformed",
                "gaps",
                "replayed_batches",
                "lost_batches",
                "restarts",
                "dropped_batches",
                "unknown_events",
            ),
            0,
        )

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="pbkv-shadow-sub", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"shadow subscriber did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def drain(self, max_batches: int = 1_024) -> list[DecodedBatch]:
        with self._lock:
            n = min(max_batches, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    @property
    def last_seq(self) -> int | None:
        return None if self._expected is None else self._expected - 1

    # ------------------------------------------------------------------ thread
    _error: BaseException | None = None

    def _run(self) -> None:
        cfg = self.config
        try:
            sub = self._ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.RCVHWM, cfg.rcv_hwm)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, self._topic)
            (sub.bind if binds(cfg.endpoint) else sub.connect)(cfg.endpoint)
        except zmq.ZMQError as exc:
            self._error = OSError(f"shadow endpoint {cfg.endpoint}: {exc}")
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sub.poll(POLL_MS):
                    continue
                frames = sub.recv_multipart()
                self._on_message(frames)
        finally:
            sub.close(linger=0)

    def _on_message(self, frames: list[bytes]) -> None:
        self.counts["received"] += 1
        try:
            batch = decode_message(frames, self._topic, self.config.limits)
        except WireError as exc:
            self.counts["malformed"] += 1
            self._bad.failed("decoding", exc)
            return
        out: list[DecodedBatch] = []
        expected = self._expected
        if expected is None and batch.seq > 0:  # joined late: catch up on what it still has
            missed = self._replay(0, batch.seq)
            self.counts["replayed_batches"] += len(missed)
            out.extend(missed)
        elif expected is not None and batch.seq < expected:
            self.counts["restarts"] += 1
            out.append(DecodedBatch(batch.seq, batch.ts, (Cleared(),), None, 0))
        elif expected is not None and batch.seq > expected:
            self.counts["gaps"] += 1
            missed = self._replay(expected, batch.seq)
            self.counts["replayed_batches"] += len(missed)
            self.counts["lost_batches"] += batch.seq - expected - len(missed)
            out.extend(missed)
        out.append(batch)
        self._expected = batch.seq + 1
        self._put(out)

    def _put(self, batches: list[DecodedBatch]) -> None:
        with self._lock:
            for b in batches:
                self.counts["unknown_events"] += b.unknown_events
                if len(self._queue) >= self.config.max_queued_batches:
                    self.counts["dropped_batches"] += 1
                    continue
                self._queue.append(b)

    def _replay(self, start: int, stop: int) -> list[DecodedBatch]:
        """Batches ``start .. stop-1`` from the publisher's replay socket (in order; those it
        no longer holds, or that arrive after ``replay_timeout_s``, are left out)."""
        cfg = self.config
        if cfg.replay_endpoint is None:
            return []
        got: dict[int, DecodedBatch] = {}
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(cfg.replay_endpoint)
            sock.send_multipart((b"", start.to_bytes(8, "big")))
            deadline_ms = int(cfg.replay_timeout_s * 1000)
            # Bounded: at most (stop - start) batches are kept, one reply read per poll.
            for _ in range(cfg.max_queued_batches + 1):
                if not sock.poll(deadline_ms):
                    break
                frames = sock.recv_multipart()
                # vLLM replies (topic, seq, payload), SGLang (seq, payload)
                if len(frames) not in (3, 4):
                    self.counts["malformed"] += 1
                    self._bad.failed("replay", f"reply of {len(frames)} frames, expected 3 or 4")
                    break
                seq_frame, payload = frames[-2:]
                seq = parse_seq(seq_frame)
                if seq == END_SEQ:
                    break
                if not start <= seq < stop:
                    continue
                try:
                    got[seq] = decode_batch(seq, payload, cfg.limits)
                except WireError as exc:
                    self.counts["malformed"] += 1
                    self._bad.failed("replay", exc)
        except (zmq.ZMQError, WireError) as exc:
            self._bad.failed("replay", exc)
        finally:
            sock.close(linger=0)
        return [got[s] for s in sorted(got)]
