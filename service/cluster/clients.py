"""Redis clients of a cluster URL: one server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://HOST:PORT``: any node, the others discovered).

On a Redis Cluster a multi-key command must keep its keys in one hash slot. Every script of
``leases`` and ``log`` does (one partition's keys share the tag ``{p<N>}``/``{e<N>}``, the
membership keys ``{cluster}``); what reads many partitions at once goes through ``mget`` and
``xread_each`` here, which split by partition on a cluster (one call per slot, bounded by the
partition count) and stay one call on a single server.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from pbkv.service.stores.redis_store import CLUSTER_SCHEMES

# What a Redis or Redis Cluster client raises (a cluster with no reachable node raises the
# second, which is not a RedisError).
ERRORS = (redis.RedisError, RedisClusterException)
SCHEMES = ("redis://", "rediss://", "unix://", *(f"{s}://" for s in CLUSTER_SCHEMES))


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """``url`` as redis-py reads it (``redis+cluster://`` -> ``redis://``)."""
    scheme, _, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}"


def sync_client(url: str, timeout_s: float, *, retry_errors: bool = True):
    """``retry_errors=False``: a Redis Cluster client that, like the single-server one, never
    sends a command again by itself after a connection error or timeout (redis-py's cluster
    client retries 10 times by default); redirects (MOVED, ASK) are still followed."""
    kw = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if is_cluster(url):
        if not retry_errors:
            kw["retry"] = Retry(NoBackoff(), 0)
        return RedisCluster.from_url(plain_url(url), **kw)
    return redis.Redis.from_url(url, **kw)


def async_client(url: str, timeout_s: float, connect_timeout_s: float = 5.0):
    kw = {"socket_timeout": timeout_s, "socket_connect_timeout": connect_timeout_s}
    if is_cluster(url):
        return AsyncRedisCluster.from_url(plain_url(url), **kw)
    return aioredis.Redis.from_url(url, **kw)


def mget(client, keys: list[str]) -> list:
    """GET of every key, in order (sync client): per slot on a cluster."""
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(keys)
    return client.mget(keys)


async def amget(client, keys: list[str]) -> list:
    """``mget`` for an asyncio client."""
    if isinstance(client, AsyncRedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


async def xread_each(client, streams: dict[str, str], count: int, block_ms: int, poll_s: float):
    """XREAD of ``streams`` (key -> last id read) as ``[(key, entries), ...]``. One blocking
    XREAD on a single server; on a cluster one non-blocking XREAD per stream (concurrently,
    so one round trip per node), then a ``poll_s`` sleep when nothing was new."""
    if not isinstance(client, AsyncRedisCluster):
        return await client.xread(streams, count=count, block=block_ms) or []
    replies = await asyncio.gather(
        *(client.xread({key: last}, count=count) for key, last in streams.items())
    )
    out = [item for reply in replies for item in (reply or [])]
    if not out:
        await asyncio.sleep(poll_s)
    return out
