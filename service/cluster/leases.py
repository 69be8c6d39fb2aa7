"""Partition leases with fencing tokens, and replica membership, as Redis scripts.

Nothing here is a protocol of its own: a lease is a key set with ``NX PX`` and renewed by
compare-and-expire; its value ``"<replica>:<token>"`` carries a fencing token taken from a
per-partition ``INCR`` counter, so every acquisition holds a larger token than any before it.
Every write to a partition (``log.APPEND``) checks in the same script that the lease still
holds exactly that value: a replica that lost its lease (expired while it was paused, taken
by another) cannot write, whatever its own clock says. Membership is a sorted set of replica
ids scored by heartbeat expiry in Redis's own clock (``TIME``), so no two clocks are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from pbkv.service.cluster.clients import amget
from pbkv.service.cluster.keys import ClusterKeys

# KEYS: lease, fence. ARGV: replica id, ttl ms. -> the new token, or nil if the lease is held.
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lease. ARGV: holder, ttl ms. -> 1 renewed, 0 not ours any more.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: holder. -> 1 released, 0 not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: replicas zset, addresses hash. ARGV: replica id, ttl ms, address.
# -> the live replica ids (dead ones are pruned first).
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('HDEL', KEYS[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# KEYS: replicas zset, addresses hash. ARGV: replica id.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: ``holder`` is the value the lease key has while it is ours."""

    kind: str
    partition: int
    token: int
    holder: str


class Leases:
    """The lease and membership scripts of one cluster, for one replica. Contract:
    ``acquire`` returns a ``Lease`` only if no lease was held; ``renew`` is true only while
    the key still holds our value; ``release`` deletes only our own lease."""

    def __init__(
        self, client: aioredis.Redis | AsyncRedisCluster, keys: ClusterKeys, replica_id: str
    ) -> None:
        self.keys, self.replica_id = keys, replica_id
        self._redis = client
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)

    async def acquire(self, kind: str, n: int, ttl_ms: int) -> Lease | None:
        k = self.keys
        token = await self._acquire(
            keys=[k.lease(kind, n), k.fence(kind, n)], args=[self.replica_id, ttl_ms]
        )
        if token is None:
            return None
        return Lease(kind, n, int(token), f"{self.replica_id}:{int(token)}")

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        key = self.keys.lease(lease.kind, lease.partition)
        return bool(await self._renew(keys=[key], args=[lease.holder, ttl_ms]))

    async def release(self, lease: Lease) -> bool:
        key = self.keys.lease(lease.kind, lease.partition)
        return bool(await self._release(keys=[key], args=[lease.holder]))

    async def heartbeat(self, ttl_ms: int, address: str) -> list[str]:
        k = self.keys
        live = await self._heartbeat(
            keys=[k.meta("replicas"), k.meta("addresses")], args=[self.replica_id, ttl_ms, address]
        )
        return sorted(x.decode() if isinstance(x, bytes) else x for x in live)

    async def leave(self) -> None:
        k = self.keys
        await self._leave(keys=[k.meta("replicas"), k.meta("addresses")], args=[self.replica_id])

    async def holders(self, kind: str) -> list[str | None]:
        """Every partition's lease value of ``kind`` (None: free)."""
        k = self.keys
        values = await amget(self._redis, [k.lease(kind, n) for n in range(k.count(kind))])
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    async def addresses(self) -> dict[str, str]:
        raw = await self._redis.hgetall(self.keys.meta("addresses"))
        return {a.decode(): b.decode() for a, b in raw.items()}
