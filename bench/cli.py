"""``pbkv bench NAME``: benchmarks, one module per subject in this folder.

Each module ``pbkv.bench.<name>`` exposes ``add_arguments(parser)`` and ``run(args) -> int``;
it is imported only when its benchmark runs.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "predictor": "forecast latency, training throughput, artifact size and load time",
    "policies": "cache policies side by side in the simulated engine (lru..oracle)",
    "service": "gRPC load generator against a running service (events/s, latency, memory)",
    "vllm": "end-to-end workflows through a real vLLM engine: stock vs pbkv",
    "planner": "cache-manager scoring + planning cost per step event (100k blocks, 1k workflows)",
    "dashboard": "scrape cost of /metrics and /api/stats and event-loop delay",
}


def register(sub: argparse._SubParsersAction) -> None:
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
