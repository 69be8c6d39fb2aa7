"""``pbkv bench NAME``: benchmarks, one module per subject in this folder; ``pbkv demo`` (the
main job end to end, ``demo.py``: the same replays with the service in the loop); and ``pbkv
replay --engine vllm`` (one session of the vLLM harness, ``vllm_session.py``).

Each module ``pbkv.bench.<name>`` exposes ``add_arguments(parser)`` and ``run(args) -> int``;
it is imported only when its benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from pbkv.cli import CliError

BENCHMARKS = {
    "predictor": "forecast latency, training throughput, artifact size and load time",
    "policies": "cache policies side by side in the simulated engine (lru..clairvoyant, bound)",
    "headroom": "pbkv vs the best non-predictive baseline and the strict bound over a grid",
    "service": "gRPC load generator against a running service (events/s, latency, memory)",
    "cluster": "cluster mode: events/s, latency, CPU and Redis ops per event, projection",
    "vllm": "end-to-end workflows through a real vLLM engine: stock vs pbkv",
    "planner": "cache-manager scoring + planning cost per step event (100k blocks, 1k workflows)",
    "dashboard": "scrape cost of /metrics and /api/stats and event-loop delay",
    "calibration": "ECE and top-1 on a shifted workload, with online recalibration",
    "shadow": "shadow mode's estimate on stock vLLM vs the connector's measured savings",
    "integration": "orchestrator-side cost per LLM call of the LangGraph tags + reporting",
}


def register(sub: argparse._SubParsersAction) -> None:
    from pbkv.bench import demo

    demo_parser = sub.add_parser(
        "demo", help="the main job end to end (train, serve, replay, compare)"
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo.run)
    replay = sub.add_parser("replay", help="replay workflows through a real engine with pbkv")
    replay.add_argument("--engine", default="vllm", choices=("vllm",), help="serving engine")
    replay.add_argument(
        "--workload", required=True, help="trace file (JSONL[.gz]) or synth:dynamic / synth:static"
    )
    replay.add_argument(
        "--history", default=None, help="trace file the predictor learns from (synth: generated)"
    )
    replay.add_argument("--num-workflows", type=int, default=8, help="workflows replayed")
    replay.add_argument("--seed", type=int, default=0, help="workload seed")
    replay.add_argument(
        "--model-dir", required=True, help="Hugging Face model folder (pbkv model make-tiny --out)"
    )
    replay.add_argument(
        "--policy",
        default="pbkv",
        help="stock|lru (plain vLLM, no connector) or a cache-manager policy "
        "(pbkv, kvflow, lru-offload, clairvoyant)",
    )
    replay.add_argument(
        "--predictor", default="markov1", help="a name in pbkv.predictor.registry.PREDICTORS"
    )
    replay.add_argument(
        "--host-tier-blocks",
        type=int,
        default=0,
        help="CPU (host) tier capacity in KV blocks (0: none)",
    )
    replay.add_argument(
        "--kv-cache-mb", type=float, default=16.0, help="GPU KV-cache memory in MiB"
    )
    replay.add_argument("--concurrency", type=int, default=4, help="workflows run at once")
    replay.add_argument(
        "--max-output-tokens",
        type=int,
        default=8,
        help="tokens generated per step (caps the trace's output)",
    )
    replay.add_argument(
        "--link",
        default="in-process",
        choices=("in-process", "service"),
        help="in-process cache manager, or a running `pbkv serve`",
    )
    replay.add_argument("--service", default="127.0.0.1:50151", help="service gRPC target")
    replay.add_argument("--out", default=None, help="write results as JSON here")
    replay.set_defaults(func=_replay)
    bench = sub.add_parser("bench", help="run a benchmark")
    bench_sub = bench.add_subparsers(dest="bench", metavar="NAME")
    for name, summary in BENCHMARKS.items():
        try:
            module = importlib.import_module(f"pbkv.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pbkv.bench.{name}":  # not written yet
                continue
            raise
        parser = bench_sub.add_parser(name, help=summary)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


def _replay(args: argparse.Namespace) -> int:
    from pbkv.bench.vllm_session import (
        STOCK_POLICIES,
        SessionRun,
        SessionSpec,
        WorkloadSpec,
        run_session,
    )

    if not (Path(args.model_dir) / "config.json").is_file():
        raise CliError(
            f"--model-dir {args.model_dir}: no config.json "
            f"(make one with `pbkv model make-tiny --out DIR`)"
        )
    if not args.workload.startswith("synth:") and not Path(args.workload).is_file():
        raise CliError(f"--workload {args.workload}: no such file (or use synth:dynamic)")
    for name in ("num_workflows", "concurrency", "max_output_tokens"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive")
    from pbkv.cache_manager.policies import POLICIES
    from pbkv.predictor.registry import PREDICTORS

    if args.policy not in STOCK_POLICIES and args.policy not in POLICIES:
        known = dict.fromkeys([*STOCK_POLICIES, *POLICIES.names()])
        raise CliError(f"--policy {args.policy!r}: known: {', '.join(known)}")
    if args.predictor not in PREDICTORS:
        raise CliError(f"--predictor {args.predictor!r}: known: {', '.join(PREDICTORS.names())}")
    if args.host_tier_blocks < 0 or args.kv_cache_mb <= 0:
        raise CliError("--host-tier-blocks must be >= 0 and --kv-cache-mb > 0")
    workload = WorkloadSpec(
        name=args.workload,
        source=args.workload,
        num_workflows=args.num_workflows,
        seed=args.seed,
        history_path=args.history,
    )
    run = SessionRun(args.policy, policy=args.policy, host_tier_blocks=args.host_tier_blocks)
    spec = SessionSpec(
        model_dir=args.model_dir,
        runs=(run,),
        with_connector=args.policy not in STOCK_POLICIES,
        predictor=args.predictor,
        kv_cache_memory_bytes=int(args.kv_cache_mb * 2**20),
        concurrency=args.concurrency,
        max_output_tokens=args.max_output_tokens,
        link=args.link,
        service_target=args.service,
        workloads=(workload,),
        warmup=False,
    )
    try:
        rows = run_session(spec)
    except ValueError as exc:  # bad policy / predictor names, bad trace lines
        raise CliError(str(exc)) from None
    for row in rows:
        row.pop("outputs", None)
        print(json.dumps({k: v for k, v in row.items() if k not in ("latencies_s", "manager")}))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0
