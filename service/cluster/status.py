"""``pbkv cluster status``: what Redis says about a cluster (read only).

Replicas (live by heartbeat), who owns each partition, how far each replica's mirror is
behind each partition's log (``lag``: entries written but not yet applied there) and the
per-replica stats each replica publishes every tick (hit rates summed for the whole service).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pbkv.service.cluster.clients import mget, sync_client
from pbkv.service.cluster.keys import ENGINE, KINDS, WORKFLOW, ClusterKeys


def _s(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def read_status(url: str, keys: ClusterKeys, timeout_s: float = 5.0) -> dict[str, Any]:
    client = sync_client(url, timeout_s)
    try:
        server_s = client.time()
        now_ms = server_s[0] * 1000 + server_s[1] // 1000
        members = client.zrange(keys.meta("replicas"), 0, -1, withscores=True)
        live = sorted(_s(m) for m, expiry in members if expiry > now_ms)
        addresses = {_s(a): _s(b) for a, b in client.hgetall(keys.meta("addresses")).items()}
        stats = {_s(a): json.loads(b) for a, b in client.hgetall(keys.meta("stats")).items()}
        owners = {
            kind: [
                _s(v).rsplit(":", 1)[0] if v is not None else None
                for v in mget(client, [keys.lease(kind, n) for n in range(keys.count(kind))])
            ]
            for kind in KINDS
        }
        last_seq = []
        for p in range(keys.workflow_partitions):
            last = client.xrevrange(keys.stream(p), count=1)
            last_seq.append(int(_s(last[0][0]).split("-")[0]) if last else 0)
    finally:
        client.close()
    replicas = []
    for rid in live:
        st = stats.get(rid, {})
        applied = st.get("applied") or [0] * keys.workflow_partitions
        # Records not applied yet; only a replica reading outlooks (engines attached) has a
        # position in every event's record (one reading finished records has none: None).
        lag = None
        if st.get("follows", "outlook") == "outlook":
            lag = sum(
                max(0, last_seq[p] - applied[p])
                for p in range(keys.workflow_partitions)
                if owners[WORKFLOW][p] != rid and p < len(applied)
            )
        replicas.append(
            {
                "replica": rid,
                "address": addresses.get(rid),
                "workflow_partitions": owners[WORKFLOW].count(rid),
                "engine_partitions": owners[ENGINE].count(rid),
                "follows": st.get("follows"),
                "lag_events": lag,
                "outlook_delay_n": st.get("outlook_delay_n", 0),
                "outlook_records": st.get("outlook_records", 0),
                "apply_cpu_s": st.get("apply_cpu_s", 0.0),
                "outlook_delay_p50_ms": st.get("outlook_delay_p50_ms"),
                "outlook_delay_p99_ms": st.get("outlook_delay_p99_ms"),
                "outlook_propagation_p50_ms": st.get("outlook_propagation_p50_ms"),
                "outlook_propagation_p99_ms": st.get("outlook_propagation_p99_ms"),
                "engines": st.get("engines", 0),
                "hits": st.get("hits") or engine_hits({}),
                "stats_age_s": round(time.time() - st["at_s"], 1) if "at_s" in st else None,
            }
        )
    return {
        "prefix": keys.prefix,
        "live_replicas": len(live),
        "replicas": replicas,
        "owners": owners,
        "unowned": {k: owners[k].count(None) for k in KINDS},
        "events_logged": sum(last_seq),
        "hits": sum_hits([r["hits"] for r in replicas]),
    }


def engine_hits(service: dict[str, Any]) -> dict[str, int]:
    """Block lookups and hits over the engines one replica serves (from its stats)."""
    out = {"gpu_lookups": 0, "gpu_hits": 0, "cpu_hits": 0}
    for hits in (service.get("hits_by_engine") or {}).values():
        for k in out:
            out[k] += int(hits.get(k, 0))
    return out


def sum_hits(parts: list[dict[str, int]]) -> dict[str, Any]:
    """The whole service's lookups and hits (replicas serve disjoint engines), and rate."""
    total = {k: sum(p[k] for p in parts) for k in ("gpu_lookups", "gpu_hits", "cpu_hits")}
    lookups = total["gpu_lookups"]
    total["hit_rate"] = (total["gpu_hits"] + total["cpu_hits"]) / lookups if lookups else None
    return total
