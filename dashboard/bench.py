"""``python -m pbkv.dashboard.bench``: what a scrape and a page refresh cost as stats grow.

The stats come from a real ``CacheManager`` whose counters are filled by engine events (one
RequestStarted per (app, agent) pair, so the per-agent tables have ``--agents`` rows); then,
side by side in one run, it times (median and p99 over ``--repeat`` calls):

- ``stats``: ``manager.stats().to_dict()`` (the stats source itself),
- ``metrics``: parse + Prometheus exposition (what ``/metrics`` does after the source),
- ``view``: parse + history + JSON view (what ``/api/stats`` does after the source),
- ``http``: a full ``GET /metrics`` and ``GET /api/stats`` through a running server;
- ``loop lag``: the largest delay a 1 ms timer on the server's loop (standing in for the gRPC
  handlers that share it) suffers during ``--repeat`` scrapes, for the server's way (only the
  stats source on the loop, the rest in a worker thread) and, for comparison, with everything
  on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agents",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="distinct agents (hit-rate table rows) per run",
    )
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per measurement")


def _manager_with_agents(num_agents: int):
    from pbkv.cache_manager.events import BlockStored, RequestStarted
    from pbkv.cache_manager.manager import CacheManager, ManagerConfig

    manager = CacheManager(ManagerConfig(policy="lru"), clock=lambda: 0.0)
    manager.attach_engine(
        "sim-0", gpu_blocks=4 * num_agents + 16, cpu_blocks=0, tokens_per_block=16
    )
    for i in range(num_agents):
        wid = f"w{i}"
        manager.start_workflow(wid, f"app{i % 10}", now_s=0.0)
        blocks = (i.to_bytes(4, "big") + b"a", i.to_bytes(4, "big") + b"b")
        manager.on_engine_event(BlockStored("sim-0", blocks, None, 16))
        manager.on_engine_event(
            RequestStarted(
                "sim-0",
                f"r{i}",
                blocks,
                40,
                num_gpu_hit_blocks=i % 3 and 1,
                workflow_id=wid,
                agent=f"agent{i}",
            )
        )
    return manager


def _lag_ms(running: Any, scrape: Callable[[], None], repeat: int) -> tuple[float, float, float]:
    """Lateness of a 1 ms timer on the server's loop while ``scrape`` runs ``repeat`` times:
    (p50, p99, max) in ms."""
    stop = False

    async def probe() -> list[float]:
        loop, lags = asyncio.get_running_loop(), []
        while not stop:
            t0 = loop.time()
            await asyncio.sleep(0.001)
            lags.append((loop.time() - t0 - 0.001) * 1e3)
        return lags

    future = running.submit(probe())
    for _ in range(repeat):
        scrape()
    stop = True
    lags = sorted(future.result(30))
    return statistics.median(lags), lags[int(0.99 * (len(lags) - 1))], lags[-1]


def _times_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def run(args: argparse.Namespace) -> int:
    from pbkv.dashboard.history import StatsHistory
    from pbkv.dashboard.http import DashboardServer, ThreadedDashboard
    from pbkv.dashboard.metrics import PbkvMetrics
    from pbkv.dashboard.schema import parse_stats
    from pbkv.dashboard.view import build_view

    rows = []
    for num_agents in args.agents:
        manager = _manager_with_agents(num_agents)
        raw = manager.stats().to_dict()
        metrics, history = PbkvMetrics(), StatsHistory(600, clock=lambda: 0.0)
        for _ in range(600):  # a full history ring, as after 10 minutes of 1 s samples
            history.record(parse_stats(raw))

        def view(raw=raw, history=history, metrics=metrics) -> str:
            return json.dumps(
                build_view(
                    parse_stats(raw),
                    history=history.series(),
                    rpc=metrics.rpc_summary(),
                    generated_s=0.0,
                )
            )

        row: dict[str, Any] = {"agents": num_agents}
        row["stats_ms"] = _times_ms(lambda m=manager: m.stats().to_dict(), args.repeat)
        row["metrics_ms"] = _times_ms(
            lambda raw=raw, m=metrics: (m.update_from_stats(raw), m.exposition()), args.repeat
        )
        row["view_ms"] = _times_ms(view, args.repeat)
        server = DashboardServer(
            lambda m=manager: m.stats().to_dict(), port=0, sample_interval_s=3600
        )
        with ThreadedDashboard(server) as running:
            for path in ("metrics", "api/stats"):

                def get(url=running.url + path) -> bytes:
                    with urllib.request.urlopen(url, timeout=30) as resp:
                        return resp.read()

                row[f"http_{path.replace('/', '_')}_ms"] = _times_ms(get, args.repeat)
                row[f"http_{path.replace('/', '_')}_bytes"] = len(get())
            scrape_url = running.url + "metrics"

            def scrape_http(url=scrape_url) -> None:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    resp.read()

            def scrape_on_loop(running=running, server=server) -> None:
                running.call(lambda: (server.refresh(), server.metrics.exposition()))

            row["loop_lag_ms"] = _lag_ms(running, scrape_http, args.repeat)
            row["loop_lag_all_on_loop_ms"] = _lag_ms(running, scrape_on_loop, args.repeat)
        rows.append(row)
        print(" ".join(f"{k}={_show(v)}" for k, v in row.items()), flush=True)
    return 0


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 3:
        return f"{value[0]:.2f}/{value[1]:.2f}/{value[2]:.2f}(p50/p99/max)"
    if isinstance(value, tuple):
        return f"{value[0]:.2f}/{value[1]:.2f}(median/p99)"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pbkv.dashboard.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
