"""``pbkv cluster status``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="inspect a cluster of pbkv serve replicas")
    cmds = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cmds.add_parser(
        "status", help="replicas, partition owners, outlook lag, hit rates (read from Redis)"
    )
    status.add_argument(
        "--cluster",
        required=True,
        metavar="URL",
        help="redis://HOST:PORT[/db] or redis+cluster://HOST:PORT",
    )
    status.add_argument("--cluster-prefix", default="pbkv", help="key prefix of the cluster")
    status.add_argument(
        "--cluster-partitions", type=int, default=16, help="workflow partitions of the cluster"
    )
    status.add_argument(
        "--cluster-engine-partitions", type=int, default=8, help="engine partitions"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:

    from pbkv.cli import CliError
    from pbkv.service.cluster.clients import ERRORS
    from pbkv.service.cluster.keys import ClusterKeys
    from pbkv.service.cluster.status import read_status

    try:
        keys = ClusterKeys(
            args.cluster_prefix, args.cluster_partitions, args.cluster_engine_partitions
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        status = read_status(args.cluster, keys)
    except (*ERRORS, ValueError) as exc:
        raise CliError(f"--cluster {args.cluster}: {exc}") from None
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    hits = status["hits"]
    rate = f"{hits['hit_rate']:.3f}" if hits["hit_rate"] is not None else "-"
    print(
        f"cluster {status['prefix']}: {status['live_replicas']} live replicas, "
        f"{status['events_logged']} events logged, unowned partitions "
        f"{status['unowned']['p']} workflow / {status['unowned']['e']} engine, "
        f"hit rate {rate} over {hits['gpu_lookups']} block lookups"
    )
    for r in status["replicas"]:
        print(
            f"  {r['replica']} {r['address']}: {r['workflow_partitions']} workflow + "
            f"{r['engine_partitions']} engine partitions, {r['engines']} engines, lag "
            f"{r['lag_events']} events, outlook delay p50 {r['outlook_delay_p50_ms']} ms "
            f"p99 {r['outlook_delay_p99_ms']} ms (from the Redis write p50 "
            f"{r['outlook_propagation_p50_ms']} ms p99 {r['outlook_propagation_p99_ms']} ms)"
        )
    return 0
