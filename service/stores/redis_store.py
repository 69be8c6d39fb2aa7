"""Redis store: the event log is one Redis list per prefix, ``{<prefix>}:events``.

Each event is one JSON string; ``RPUSH`` returns the list's new length, which gives the
batch's sequence numbers atomically in one round trip. Durability here means "acknowledged =
in Redis": the Redis on this project's machines keeps nothing on disk (no RDB, no AOF), so
events survive a crash of the pbkv service but not of Redis itself. With ``appendonly yes``
and ``appendfsync always`` on the Redis side the same code is durable on disk.

``redis_url`` forms (``docs/service.md``, "Redis Cluster")::

    redis://HOST:PORT/DB                one Redis server (rediss:// for TLS)
    redis+cluster://HOST:PORT           a Redis Cluster: any node; the others are discovered
    ...?wait_replicas=1&wait_timeout_ms=500
                                        after each append, WAIT until 1 replica has it: the
                                        append fails (UNAVAILABLE) if fewer acknowledge in time

Key layout: the braces make ``<prefix>`` the key's hash tag, so every key of one prefix
lives in one hash slot of a cluster (one list today; a multi-key command or script on keys
``{<prefix>}:...`` never crosses slots). A single Redis holding the key of older versions,
``<prefix>:events``, has it renamed on open.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from pbkv.service.config import MAX_WAIT_MS, MAX_WAIT_REPLICAS
from pbkv.service.records import EventRecord, from_payload, payload
from pbkv.service.stores.base import StoreError, TraceStore

_PAGE = 5_000
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_ERRORS = (redis.RedisError, RedisClusterException)


def parse_url(url: str) -> tuple[str, bool, int, int]:
    """(the URL redis-py reads, cluster?, wait_replicas, wait_timeout_ms) of a ``redis_url``;
    ``StoreError`` naming the option that is wrong."""
    parts = urlsplit(url)
    cluster = parts.scheme in CLUSTER_SCHEMES
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ("wait_replicas", "wait_timeout_ms")}
    values = {}
    for name, default, low, high in (
        ("wait_replicas", 0, 0, MAX_WAIT_REPLICAS),
        ("wait_timeout_ms", 1_000, 1, MAX_WAIT_MS),
    ):
        raw = options.get(name, str(default))
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise StoreError(
                f"redis_url {url}: {name}={raw!r} must be an integer in [{low}, {high}]"
            )
        values[name] = int(raw)
    rest = urlencode([(k, v) for k, v in query if k not in options])
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    plain = urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment))
    return plain, cluster, values["wait_replicas"], values["wait_timeout_ms"]


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
        if not prefix or any(c.isspace() or c in "{}" for c in prefix):
            raise StoreError(f"redis_prefix {prefix!r} must be non-empty without spaces or braces")
        self.url, self.prefix = url, prefix
        self.key = f"{{{prefix}}}:events"
        plain, self.cluster, self.wait_replicas, self.wait_timeout_ms = parse_url(url)
        timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        try:
            if self.cluster:
                self._redis = RedisCluster.from_url(plain, **timeouts)
            else:
                self._redis = redis.Redis.from_url(plain, **timeouts)
                if self._redis.info("cluster").get("cluster_enabled"):
                    raise StoreError(
                        f"redis_url {url}: the server is a Redis Cluster node; "
                        f"use redis+cluster://{urlsplit(url).netloc}"
                    )
                legacy = f"{prefix}:events"  # the key before hash tags
                if self._redis.exists(legacy):
                    self._redis.renamenx(legacy, self.key)
            self._redis.ping()
        except (*_ERRORS, ValueError) as exc:
            raise StoreError(f"redis_url {url}: {exc}") from exc

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
            length = self._push(values)
        except _ERRORS as exc:
            if self.cluster:  # a failover moves the slot: look the topology up again
                with contextlib.suppress(*_ERRORS):
                    self._redis.nodes_manager.initialize()
            raise StoreError(f"redis {self.key}: append failed: {exc}") from exc
        first = length - len(values) + 1
        return list(range(first, length + 1))

    def _push(self, values: list[str]) -> int:
        """RPUSH; with ``wait_replicas``, then WAIT on the same connection (WAIT counts the
        replicas that have this client's writes), failing when too few acknowledge."""
        if not self.wait_replicas:
            return self._redis.rpush(self.key, *values)
        client = self._redis
        if self.cluster:
            client = self._redis.get_redis_connection(self._redis.get_node_from_key(self.key))
        pipe = client.pipeline(transaction=False)
        pipe.rpush(self.key, *values)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        length, acked = pipe.execute()
        if acked < self.wait_replicas:
            raise StoreError(
                f"redis {self.key}: {acked} of wait_replicas={self.wait_replicas} replicas "
                f"acknowledged the append within {self.wait_timeout_ms} ms (it may be lost "
                f"if the master fails now)"
            )
        return length

    def events(self, after_seq: int = 0) -> Iterator[EventRecord]:
        index = after_seq  # seq n is list index n-1
        while True:
            try:
                chunk = self._redis.lrange(self.key, index, index + _PAGE - 1)
            except _ERRORS as exc:
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
