"""Redis store: the event log is one Redis list per prefix (``<prefix>:events``).

Each event is one JSON string; ``RPUSH`` returns the list's new length, which gives the
batch's sequence numbers atomically in one round trip. Durability here means "acknowledged =
in Redis": the Redis on this project's machines keeps nothing on disk (no RDB, no AOF), so
events survive a crash of the pbkv service but not of Redis itself. With ``appendonly yes``
and ``appendfsync always`` on the Redis side the same code is durable on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import redis

from pbkv.service.records import EventRecord, from_payload, payload
from pbkv.service.stores.base import StoreError, TraceStore

_PAGE = 5_000


def connect(url: str, timeout_s: float, what: str) -> redis.Redis:
    """A client of ``url`` that answered a PING; ``StoreError`` naming ``what`` if not."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise StoreError(f"{what} {url}: {exc}") from exc
    return client


class RedisStore(TraceStore):
    name = "redis"

    def __init__(self, url: str, prefix: str = "pbkv", *, timeout_s: float = 5.0) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise StoreError(f"redis_prefix {prefix!r} must be non-empty without spaces")
        self.url, self.prefix = url, prefix
        self.key = f"{prefix}:events"
        self._redis = connect(url, timeout_s, "redis_url")

    def describe(self) -> str:
        return f"redis:{self.url} key {self.key}"

    def append(self, events: Sequence[EventRecord]) -> list[int]:
        if not events:
            return []
        values = [
            json.dumps(
                {
                    "k": e.kind,
                    "t": e.tenant,
                    "w": e.workflow_id,
                    "a": e.at_s,
                    "p": payload(e.event),
                },
                separators=(",", ":"),
            )
            for e in events
        ]
        try:
            length = self._redis.rpush(self.key, *values)
        except redis.RedisError as exc:
            raise StoreError(f"redis {self.key}: append failed: {exc}") from exc
        first = length - len(values) + 1
        return list(range(first, length + 1))

    def events(self, after_seq: int = 0) -> Iterator[EventRecord]:
        index = after_seq  # seq n is list index n-1
        while True:
            try:
                chunk = self._redis.lrange(self.key, index, index + _PAGE - 1)
            except redis.RedisError as exc:
                raise StoreError(f"redis {self.key}: read failed: {exc}") from exc
            for offset, raw in enumerate(chunk):
                seq = index + offset + 1
                try:
                    d = json.loads(raw)
                    record = EventRecord(d["t"], d["w"], d["a"], from_payload(d["k"], d["p"]), seq)
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreError(f"redis {self.key}: event {seq}: {exc!r}") from exc
                yield record
            if len(chunk) < _PAGE:
                return
            index += len(chunk)

    def clear(self) -> None:
        """Delete this prefix's log (tests, and operators resetting a store)."""
        self._redis.delete(self.key)

    def close(self) -> None:
        self._redis.close()
