"""The failover of ``pbkv bench cluster``: ``kill -9`` of one replica after the load, and
what the survivors' take-over rebuilds read against what the victim's logs say ran."""

from __future__ import annotations

import json
import os
import signal
import time

import redis


def running_in_log(client: redis.Redis, keys, parts: list[int]) -> dict[str, int]:
    """What the partitions' logs say runs (started, not ended) from each one's rebuild base:
    the workflows and their events there (starts included). Read from Redis, not from any
    replica, so a take-over's ``rebuilt_events`` can be checked: a rebuild applies at least
    these."""
    from pbkv.service.cluster.log import decode_entry

    workflows = events = 0
    for p in parts:
        base = int(client.get(keys.base(p)) or 0)
        start, per_workflow = (f"{base}-0" if base else "-"), {}
        for _ in range(10_000):  # pages of 1,000: far more than a base ever leaves
            chunk = client.xrange(keys.stream(p), start, "+", count=1_000)
            for entry_id, fields in chunk:
                r = decode_entry(p, entry_id, fields).record
                w = r.tenant, r.workflow_id
                if r.kind == "start":
                    per_workflow[w] = 1
                elif r.kind == "end":
                    per_workflow.pop(w, None)
                elif w in per_workflow:
                    per_workflow[w] += 1
            if len(chunk) < 1_000:
                break
            start = f"({chunk[-1][0].decode()}"
        workflows += len(per_workflow)
        events += sum(per_workflow.values())
    return {"workflows": workflows, "events": events}


def kill_one(url: str, procs: list, targets: list[str], client: redis.Redis) -> dict:
    """``kill -9`` the last replica after the load: how long until the survivors own every
    partition again, and what their take-over rebuilds read (from each partition's rebuild
    base) against the events the logs hold and the running workflows the victim's partitions
    held in their logs (a rebuild reads at least their events; none running: it reads 0).
    The survivors' stats are read once they show every victim partition ready: a take-over's
    events are counted in the stats of the same tick that makes it ready."""
    from pbkv.service.cluster.keys import ENGINE, WORKFLOW, ClusterKeys
    from pbkv.service.cluster.status import read_status

    keys = ClusterKeys()

    def survivors() -> dict[str, dict]:
        raw = client.hgetall(keys.meta("stats"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    logged = sum(client.xlen(keys.stream(p)) for p in range(keys.workflow_partitions))
    before = survivors()
    victim = next(rid for rid, st in before.items() if st.get("address") == targets[-1])
    field = {WORKFLOW: "workflow_partitions", ENGINE: "engine_partitions"}
    held = {k: set(before[victim][f]) for k, f in field.items()}
    running = running_in_log(client, keys, sorted(held[WORKFLOW]))  # the load has stopped
    os.killpg(procs[-1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    owned_s = None
    while True:
        if owned_s is None:
            st = read_status(url, keys)
            if st["live_replicas"] == len(procs) - 1 and st["unowned"] == {WORKFLOW: 0, ENGINE: 0}:
                owned_s = time.monotonic() - t0
        now = {rid: x for rid, x in survivors().items() if rid != victim and rid in before}
        ready = {k: {p for x in now.values() for p in x[f]} for k, f in field.items()}
        if owned_s is not None and all(held[k] <= ready[k] for k in held):
            break
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"the survivors did not take every partition: {st}")
        time.sleep(0.05)

    def delta(name: str) -> int:
        return sum(x[name] - before[r][name] for r, x in now.items())

    rebuilt = delta("rebuilt_events")
    return {
        "victim_workflow_partitions": len(held[WORKFLOW]),
        "all_owned_after_s": round(owned_s, 2),
        "events_in_logs": logged,
        "running_workflows_in_victim_logs": running["workflows"],
        "their_events_since_base": running["events"],
        "rebuilt_events": rebuilt,
        # Short: a rebuild read fewer events than the running workflows had (a lost state).
        "rebuild_short": rebuilt < running["events"],
        "survivor_leases_lost": delta("lost"),
        "rebuild_max_s": max(x["rebuild_max_s"] for x in now.values()),
    }
