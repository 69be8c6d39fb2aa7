"""Partitions and Redis key names of a cluster.

Workflows split into ``workflow_partitions`` by a CRC-32 of ``"<tenant>/<workflow_id>"``;
engines into ``engine_partitions`` by a CRC-32 of the engine id (stable across processes,
unlike ``hash()``). Every per-partition key carries the partition as a hash tag, so one
partition's keys share a slot on a Redis Cluster::

    <prefix>:{p<N>}:lease    "<replica>:<token>" with PX expiry: who owns workflow partition N
    <prefix>:{p<N>}:fence    INCR counter: the fencing token of the latest acquisition
    <prefix>:{p<N>}:seq      INCR counter: the partition's event sequence numbers
    <prefix>:{p<N>}:events   stream: the partition's events, entry id "<seq>-0"
    <prefix>:{p<N>}:outlook  stream: one outlook record per event, same ids (``outlook``)
    <prefix>:{p<N>}:finished stream: the outlook records of ended workflows alone
    <prefix>:{p<N>}:base     the sequence number a rebuild starts at: every workflow that
                             started before it had ended when the owner wrote it
    <prefix>:{p<N>}:ids      zset event id -> seq of the partition's recent events that came
                             with an id: the append script answers a resent id from it
    <prefix>:{p<N>}:resent   counter: events the append script answered from ``ids``
    <prefix>:{e<N>}:lease    / :fence   the same for engine partition N (no events)
    <prefix>:{cluster}:replicas   zset replica id -> heartbeat expiry (Redis TIME, ms)
    <prefix>:{cluster}:addresses  hash replica id -> gRPC address other replicas dial
    <prefix>:{cluster}:stats      hash replica id -> JSON stats (``pbkv cluster status``)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

WORKFLOW = "p"  # partition kinds, as they appear in the hash tags
ENGINE = "e"
KINDS = (WORKFLOW, ENGINE)


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Key names and partition functions of one cluster (``prefix``)."""

    prefix: str = "pbkv"
    workflow_partitions: int = 16
    engine_partitions: int = 8

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() or c in "{}" for c in self.prefix):
            raise ValueError(f"cluster prefix {self.prefix!r} must be non-empty, no spaces or {{}}")
        for name in ("workflow_partitions", "engine_partitions"):
            if not 1 <= getattr(self, name) <= 1024:
                raise ValueError(f"{name} must be in [1, 1024], got {getattr(self, name)}")

    def count(self, kind: str) -> int:
        return self.workflow_partitions if kind == WORKFLOW else self.engine_partitions

    def workflow_partition(self, tenant: str, workflow_id: str) -> int:
        return zlib.crc32(f"{tenant}/{workflow_id}".encode()) % self.workflow_partitions

    def engine_partition(self, engine_id: str) -> int:
        return zlib.crc32(engine_id.encode()) % self.engine_partitions

    def part(self, kind: str, n: int, name: str) -> str:
        return f"{self.prefix}:{{{kind}{n}}}:{name}"

    def lease(self, kind: str, n: int) -> str:
        return self.part(kind, n, "lease")

    def fence(self, kind: str, n: int) -> str:
        return self.part(kind, n, "fence")

    def stream(self, n: int) -> str:
        return self.part(WORKFLOW, n, "events")

    def outlook(self, n: int) -> str:
        return self.part(WORKFLOW, n, "outlook")

    def finished(self, n: int) -> str:
        return self.part(WORKFLOW, n, "finished")

    def base(self, n: int) -> str:
        return self.part(WORKFLOW, n, "base")

    def seq(self, n: int) -> str:
        return self.part(WORKFLOW, n, "seq")

    def ids(self, n: int) -> str:
        return self.part(WORKFLOW, n, "ids")

    def resent(self, n: int) -> str:
        return self.part(WORKFLOW, n, "resent")

    def meta(self, name: str) -> str:
        return f"{self.prefix}:{{cluster}}:{name}"
