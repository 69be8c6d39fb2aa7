"""``pbkv bench cluster``: what cluster mode costs per event, and where it saturates.

    pbkv bench cluster --replicas 1,2 --duration-s 15 --out bench-out/cluster

For each replica count it starts a fresh ``redis-server`` of its own (``--redis-port``,
nothing on disk), that many ``pbkv serve --cluster`` processes (``service_process``), waits
until every partition has an owner, then drives the ``pbkv bench service`` load
(``service.run_load``: StepStarted + StepFinished over batched Session streams, every
replica in the client's target list, so the client routes each workflow's events to its
owner, ``service/routing.py``). Measured over the load: events/s, StepFinished -> forecast
p50/p99, CPU seconds per 1,000 events of each replica and of redis-server (``/proc``, via
psutil), events per CPU-second of the replicas together, Redis commands per event (``INFO
commandstats``) and the outlook propagation delay each replica measured (owner accepting an
event to another replica applying its outlook record: ``pbkv cluster status``'s p50/p99 over
its last 4,096 records). Then ``redis-benchmark`` measures the Redis node's capacity (SET,
GET, XADD requests/s). ``--wait-replicas 0,1,0,1`` runs every replica count once per value,
in that order, with ``pbkv serve --cluster-wait-replicas`` set to it (a Redis replica of our
redis-server on ``--redis-port`` + 1 when any is on): what WAIT after each append costs.

Projection (``project``), linear in the replica count from the two smallest counts measured:
replica CPU per event = own + (R-1) * cross (what each further replica adds per event: the
outlook records it applies and the outlooks it computes for its engines' plans) and Redis
CPU / commands per event = r1 + (R-1) * (r2 - r1) (each further reader reads every outlook
stream), where R = min(N, engine partitions) readers when engines are attached (only the
owners of engine partitions plan; other replicas read only finished records), else N. Each
replica and Redis get one core; the cluster's events/s limit is the smallest of N / replica
cost, 1 / Redis CPU cost and the Redis command capacity / commands per event. It is an
extrapolation, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from pbkv.bench.cluster_failover import kill_one
from pbkv.bench.cluster_redis import commandstats, redis_capacity, redis_replica, redis_server
from pbkv.bench.service import run_load
from pbkv.bench.service_process import cpu_s, default_model, start_service

MAX_REPLICAS = 8  # on one machine
MAX_PROJECT = 1_024
MAX_ENGINES = 64


def _counts(text: str, what: str, high: int) -> list[int]:
    from pbkv.cli import CliError

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise CliError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(not 1 <= v <= high for v in values):
        raise CliError(f"{what} must be integers in [1, {high}], got {text!r}")
    return sorted(set(values))


def _waits(text: str) -> list[int]:
    from pbkv.cli import CliError

    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise CliError(f"--wait-replicas must be comma-separated integers, got {text!r}") from None
    if any(v not in (0, 1) for v in values):
        raise CliError(f"--wait-replicas must be 0 or 1 (one Redis replica here), got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", default="1,2", help="replica counts to run, e.g. 1,2")
    parser.add_argument("--project", default="8,32", help="replica counts to project to")
    parser.add_argument("--workflows", type=int, default=200, help="workflows kept running")
    parser.add_argument("--steps", type=int, default=8, help="steps per workflow")
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured load time")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before it (not counted)")
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--streams", type=int, default=4, help="Session streams per process")
    parser.add_argument(
        "--engines",
        type=int,
        default=2,
        help="idle engines attached in all, spread over the replicas (each straight to the "
        "owner of its engine partition): the same planning work for every replica count",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offered events/s in all (open loop: latency and outlook delay below saturation); "
        "default: closed loop, as fast as the replicas answer",
    )
    parser.add_argument(
        "--wait-replicas",
        default="0",
        help="the replicas' --cluster-wait-replicas, every replica count once per value, in "
        "this order (0,1,0,1 alternates off and on); any > 0 starts a Redis replica of our "
        "redis-server on --redis-port + 1",
    )
    parser.add_argument("--redis-port", type=int, default=7420, help="port of our redis-server")
    parser.add_argument("--redis-benchmark-n", type=int, default=100_000, help="requests per test")
    parser.add_argument("--out", type=Path, default=Path("bench-out/cluster"), help="folder")


def wait_owned(url: str, n: int, timeout_s: float = 60.0) -> None:
    from pbkv.service.cluster.keys import ENGINE, WORKFLOW, ClusterKeys
    from pbkv.service.cluster.status import read_status

    deadline = time.monotonic() + timeout_s
    while True:
        st = read_status(url, ClusterKeys())
        if st["live_replicas"] == n and st["unowned"] == {WORKFLOW: 0, ENGINE: 0}:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} replicas did not take every partition: {st}")
        time.sleep(0.2)


def run_one(
    n: int, url: str, redis_pid: int, args: argparse.Namespace, tmp: Path, wait: int = 0
) -> dict:
    client = redis.Redis.from_url(url)
    client.flushall()
    model = default_model(tmp) if not (tmp / "model").exists() else tmp / "model"
    procs, targets, links = [], [], []
    try:
        for i in range(n):
            folder = tmp / f"n{n}-w{wait}-r{i}"
            folder.mkdir(exist_ok=True)
            proc, target = start_service(
                folder, model, ["--cluster", url, "--cluster-wait-replicas", str(wait)]
            )
            threading.Thread(target=lambda p=proc: [None for _ in p.stdout], daemon=True).start()
            procs.append(proc)
            targets.append(target)
        wait_owned(url, n)
        links.extend(attach_engines(url, targets, args.engines))
        cpu0 = [cpu_s(p.pid) for p in procs]
        rcpu0, ops0 = cpu_s(redis_pid), commandstats(client)
        load = run_load(",".join(targets), args)
        events = load.pop("_events_total")
        cpu = [cpu_s(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        rcpu, ops = cpu_s(redis_pid) - rcpu0, commandstats(client) - ops0
        time.sleep(1.5)  # every replica publishes its stats once more (a lease tick)
        delays = outlook_delays(url)
        attached = sum(link.stats().plans_received > 0 for link in links)
        failover = kill_one(url, procs, targets, client) if n > 1 else None
    finally:
        for link in links:
            link.close()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(60)
        client.close()
    per_k = 1000 / max(events, 1)
    return {
        "replicas": n,
        "wait_replicas": wait,
        "load_average": os.getloadavg(),
        "events": events,
        "events_per_s": load["events_per_s"],
        "step_finished_p50_ms": load["step_finished_p50_ms"],
        "step_finished_p99_ms": load["step_finished_p99_ms"],
        "errors": load["errors"],
        "first_error": load.get("first_error"),
        "replica_cpu_s_per_1k_events": [round(c * per_k, 4) for c in cpu],
        "replicas_cpu_s_per_1k_events": round(sum(cpu) * per_k, 4),
        "events_per_replica_cpu_s": round(events / max(sum(cpu), 1e-9)),
        "outlook_delay_ms": delays,
        "engines_with_plans": attached,
        "failover": failover,
        "redis_cpu_s_per_1k_events": round(rcpu * per_k, 4),
        "redis_ops_per_event": round(ops / max(events, 1), 3),
    }


def attach_engines(url: str, targets: list[str], count: int) -> list:
    """``count`` idle engines, the i-th at replica ``i % len(targets)``, attached straight to
    it: engine ids whose engine partition it owns (so it plans, and reads the outlooks of the
    workflows other replicas own)."""
    from pbkv.service.cluster.keys import ENGINE, ClusterKeys
    from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig

    keys = ClusterKeys()
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    try:
        while True:  # until the engine partitions are spread: each replica owns one
            holders = client.mget([keys.lease(ENGINE, e) for e in range(keys.engine_partitions)])
            addresses = {
                a.decode(): b.decode() for a, b in client.hgetall(keys.meta("addresses")).items()
            }
            owner = [addresses.get(h.decode().rsplit(":", 1)[0]) if h else None for h in holders]
            if set(targets) <= set(owner) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        client.close()
    links = []
    ids = (f"bench-engine-{j}" for j in range(10_000))
    for k in range(count):
        target = targets[k % len(targets)]
        eid = next((i for i in ids if owner[keys.engine_partition(i)] == target), None)
        if eid is None:
            raise RuntimeError(f"{target} owns no engine partition: {owner}")
        config = EngineLinkConfig(target=target, engine_id=eid, gpu_blocks=256)
        links.append(EngineLinkClient(config))
    deadline = time.monotonic() + 30
    while not all(link.stats().connected for link in links) and time.monotonic() < deadline:
        time.sleep(0.1)
    return links


def outlook_delays(url: str) -> list[dict]:
    """Each live replica's outlook delays and follower counters, as it last published them."""
    from pbkv.service.cluster.keys import ClusterKeys
    from pbkv.service.cluster.status import read_status

    keys = ClusterKeys()
    live = {r["replica"] for r in read_status(url, keys)["replicas"]}
    client = redis.Redis.from_url(url)
    try:
        raw = client.hgetall(keys.meta("stats"))
    finally:
        client.close()
    out = []
    for rid, text in sorted(raw.items()):
        r = json.loads(text)
        if rid.decode() not in live:
            continue
        records = r.get("outlook_records") or 0
        out.append(
            {
                "address": r.get("address"),
                "n": r.get("outlook_delay_n"),
                "p50": r.get("outlook_delay_p50_ms"),
                "p99": r.get("outlook_delay_p99_ms"),
                "from_write_p50": r.get("outlook_propagation_p50_ms"),
                "from_write_p99": r.get("outlook_propagation_p99_ms"),
                "records": records,
                "apply_us_per_record": round(1e6 * r.get("apply_cpu_s", 0.0) / max(1, records), 1),
                **{
                    k: r.get(k)
                    for k in ("follows", "resyncs", "outlook_skipped", "taken", "lost", "reads")
                },
                "read_wait_ms": round(
                    1e3 * r.get("read_wait_s", 0.0) / max(1, r.get("reads") or 0), 2
                ),
                "workflow_partitions": len(r.get("workflow_partitions", [])),
            }
        )
    return out


def project(
    runs: list[dict], capacity_ops: float, counts: list[int], readers: int | None = None
) -> list[dict]:
    """Events/s limits at ``counts`` replicas from the measured per-event costs (module doc).
    ``readers``: at most this many replicas read outlook records (engines sit on the owners
    of the engine partitions; the others read only finished records), so the per-replica
    cross costs stop growing there; None: they grow with every replica."""
    a = runs[0]
    b = runs[1] if len(runs) > 1 else runs[0]
    span = max(1, b["replicas"] - a["replicas"])
    own = a["replicas_cpu_s_per_1k_events"] / 1000
    cross = max(0.0, (b["replicas_cpu_s_per_1k_events"] - a["replicas_cpu_s_per_1k_events"]))
    cross /= 1000 * span
    r_cpu = a["redis_cpu_s_per_1k_events"] / 1000
    r_cpu_step = max(0.0, b["redis_cpu_s_per_1k_events"] / 1000 - r_cpu) / span
    ops = a["redis_ops_per_event"]
    ops_step = max(0.0, b["redis_ops_per_event"] - ops) / span
    out = []
    for n in counts:
        extra = (n if readers is None else min(n, max(readers, a["replicas"]))) - a["replicas"]
        limits = {
            "replica_cpu": n / (own + extra * cross),
            "redis_cpu": 1 / (r_cpu + extra * r_cpu_step),
            "redis_ops": capacity_ops / (ops + extra * ops_step),
        }
        first = min(limits, key=limits.get)
        out.append(
            {
                "replicas": n,
                **{f"max_events_per_s_by_{k}": round(v) for k, v in limits.items()},
                "saturates_first": first,
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError

    counts = _counts(args.replicas, "--replicas", MAX_REPLICAS)
    waits = _waits(args.wait_replicas)
    projected = _counts(args.project, "--project", MAX_PROJECT)
    if args.workflows <= 0 or args.procs <= 0 or args.steps <= 0 or args.duration_s <= 0:
        raise CliError("--workflows, --procs, --steps and --duration-s must be > 0")
    if not 0 <= args.engines <= MAX_ENGINES:
        raise CliError(f"--engines must be in [0, {MAX_ENGINES}], got {args.engines}")
    if not 1 <= args.redis_port <= 65535 or args.redis_benchmark_n <= 0:
        raise CliError("--redis-port must be in [1, 65535] and --redis-benchmark-n > 0")
    if args.rate is not None and not 0 < args.rate <= 1e6:
        raise CliError(f"--rate must be in (0, 1e6] events/s, got {args.rate}")
    args.api = "session"  # the client's default session options
    args.max_inflight = args.linger_ms = args.max_batch = None
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = redis_server(args.redis_port, tmp)
        copy = redis_replica(args.redis_port, tmp / "replica") if max(waits) else None
        url = f"redis://127.0.0.1:{args.redis_port}/0"
        try:
            report["runs"] = all_runs = []
            for wait in waits:
                for n in counts:
                    print(
                        f"{n} replica(s) on {url}: {args.workflows} workflows, "
                        f"{args.duration_s} s, --cluster-wait-replicas {wait}"
                    )
                    all_runs.append(run_one(n, url, server.pid, args, tmp, wait))
            report["redis_capacity_rps"] = cap = redis_capacity(
                args.redis_port, args.redis_benchmark_n
            )
        finally:
            for proc in (server, copy):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    # The projection: the first wait setting's runs, one per replica count.
    runs = [r for r in all_runs if r["wait_replicas"] == waits[0]][: len(counts)]
    report["redis_capacity_ops_assumed"] = capacity = min(cap.values())
    # The cross-replica and per-replica Redis costs need two replica counts; with one, none.
    from pbkv.service.cluster.keys import ClusterKeys

    readers = ClusterKeys().engine_partitions if args.engines else None
    report["projection_readers_cap"] = readers
    report["projection"] = project(runs, capacity, projected, readers) if len(runs) > 1 else []
    report["load_average_at_end"] = os.getloadavg()
    print_table(report)
    (args.out / "cluster.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'cluster.json'}")
    return 0


def print_table(report: dict) -> None:
    print(
        "replicas  wait  events/s  p50 ms  p99 ms  cpu s/1k ev (each)  ev/cpu-s  redis cpu s/1k  "
        "redis ops/ev  outlook p50/p99 ms"
    )
    for r in report["runs"]:
        each = ",".join(f"{c:.3f}" for c in r["replica_cpu_s_per_1k_events"])
        delays = ",".join(
            f"{d['from_write_p50']}/{d['from_write_p99']}" for d in r["outlook_delay_ms"] if d["n"]
        )
        print(
            f"{r['replicas']:>8}  {r['wait_replicas']:>4}  {r['events_per_s']:>8.0f}  "
            f"{r['step_finished_p50_ms']:>6.1f}  {r['step_finished_p99_ms']:>6.1f}  "
            f"{each:>18}  {r['events_per_replica_cpu_s']:>8}  "
            f"{r['redis_cpu_s_per_1k_events']:>14.3f}  {r['redis_ops_per_event']:>12.2f}  "
            f"{delays or '-'}"
        )
    for r in report["runs"]:
        if f := r["failover"]:
            print(
                f"failover ({r['replicas']} replicas): all owned after {f['all_owned_after_s']} s,"
                f" {f['running_workflows_in_victim_logs']} workflows running in the victim's"
                f" logs ({f['their_events_since_base']} events), rebuilt {f['rebuilt_events']}"
                f" events{' -- SHORT' if f['rebuild_short'] else ''}"
            )
    print(f"redis-benchmark requests/s: {report['redis_capacity_rps']}")
    for p in report["projection"]:
        print(
            f"projected {p['replicas']:>4} replicas: limits events/s replica CPU "
            f"{p['max_events_per_s_by_replica_cpu']}, Redis CPU "
            f"{p['max_events_per_s_by_redis_cpu']}, Redis ops "
            f"{p['max_events_per_s_by_redis_ops']} -> saturates first: {p['saturates_first']}"
        )
