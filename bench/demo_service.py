"""``pbkv demo``'s pbkv run through the service: the service in-process (gRPC, SQLite trace
store, dashboard), the simulated engine attached over the EngineLink stream, orchestrator calls
over gRPC, each synced so the service decides exactly what the in-process manager would (see
bench/demo.py)."""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
import time
from pathlib import Path

from pbkv.bench.demo_baseline import BaselineCurve, WorkflowTap, publish
from pbkv.bench.progress import Bar


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _free_or_any(port: int) -> int:
    """``port`` when it can be bound on loopback now, else 0 (the OS picks one)."""
    if port == 0:
        return 0
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


class _SyncedLink:
    """The simulated engine's view of the link: events out as usual; a plan pull first waits
    for the service to catch up (virtual time stands still meanwhile)."""

    def __init__(self, link, timeout_s: float = 30.0) -> None:
        self.link, self.config, self.timeout_s = link, link.config, timeout_s
        self.send = link.send

    def latest_plan(self):
        if not self.link.sync(self.timeout_s):
            raise RuntimeError(f"the service did not answer a sync within {self.timeout_s} s")
        return self.link.latest_plan()


class _SyncedOrchestrator:
    """Orchestrator calls over gRPC, each after the engine's events sent so far are applied,
    so the service sees engine and orchestrator events in simulation order."""

    def __init__(self, inner, link: _SyncedLink) -> None:
        self.inner, self.link = inner, link

    def __getattr__(self, name: str):
        call = getattr(self.inner, name)

        def synced(*args, **kwargs):
            if not self.link.link.sync(self.link.timeout_s):
                raise RuntimeError("the service did not answer a sync")
            return call(*args, **kwargs)

        return synced


def run_via_service(
    replay: list,
    predictor,
    preset,
    prompts,
    setup,
    args,
    curve: BaselineCurve,
    bar: Bar,
    finish,
) -> None:
    """pbkv's replay through the service; ``finish(row, stats)`` reports it while the
    dashboard is still up (which then stays up with --keep-serving / --linger-s)."""
    from pbkv.bench.policy_run import manager_config, with_manager_prefetch
    from pbkv.cache_manager.manager import CacheManager
    from pbkv.engine_adapter.replay import ClientOrchestrator
    from pbkv.engine_adapter.sim.attach import attach_link
    from pbkv.engine_adapter.sim.engine import EngineConfig
    from pbkv.engine_adapter.sim.replay import ReplayConfig
    from pbkv.engine_adapter.sim.replay import replay as run_replay
    from pbkv.service.client import PbkvClient
    from pbkv.service.config import ServiceConfig
    from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
    from pbkv.service.server_thread import ServerThread

    store_path = args.out / "traces.sqlite3"
    for suffix in ("", "-wal", "-shm"):  # a fresh log per demo run (it replays the same ids)
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    engine_ref: list = []
    manager = CacheManager(
        manager_config("pbkv", 4, preset.cost),
        predictor=copy.deepcopy(predictor),
        clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
    )
    config = ServiceConfig(
        port=_free_or_any(args.port),
        http_port=_free_or_any(args.http_port),
        store_path=store_path,
        model_path=args.out / "model",
        watch_model_s=None,
    )
    with ServerThread(config, manager) as server:
        extra = server.server.servicer.extra_stats
        publish(extra, curve, 0)

        def done(k: int) -> None:
            publish(extra, curve, k)
            bar.advance()

        say(f"pbkv service: gRPC {server.target}, trace store {store_path}")
        say(f"dashboard: {server.server.http_url}  (open it now; it updates live)")
        link_cfg = EngineLinkConfig(
            target=server.target,
            engine_id="sim-0",
            gpu_blocks=setup.gpu_blocks,
            cpu_blocks=setup.cpu_blocks,
            tokens_per_block=setup.tokens_per_block,
            max_plan_age_s=None,
        )
        with EngineLinkClient(link_cfg) as link, PbkvClient(server.target, timeout_s=30) as client:
            if not link.wait_connected(30):
                raise RuntimeError("the engine could not attach to the service")
            synced = _SyncedLink(link)
            engine = attach_link(
                synced,
                EngineConfig(
                    gpu_blocks=setup.gpu_blocks,
                    cpu_blocks=setup.cpu_blocks,
                    tokens_per_block=setup.tokens_per_block,
                    engine_id="sim-0",
                ),
                preset.cost,
            )
            engine_ref.append(engine)
            t0 = time.perf_counter()
            orchestrator = ClientOrchestrator(client)
            result = run_replay(
                engine,
                replay,
                ReplayConfig(concurrency=setup.concurrency),
                orchestrator=WorkflowTap(_SyncedOrchestrator(orchestrator, synced), done),
                prompts=prompts,
            )
            if orchestrator.num_errors:
                raise RuntimeError(
                    f"{orchestrator.num_errors} orchestrator calls to the "
                    f"service failed; last: {orchestrator.last_error}"
                )
            link.sync(30)
            stats = client.stats()
            row = {
                "policy": "pbkv",
                "via": "gRPC service",
                **with_manager_prefetch(result.summary(), stats),
                "wall_s": time.perf_counter() - t0,
            }
            row["link_events_dropped"] = link.stats().events_dropped
        finish(row, stats)
        _stay_up(args, server.server.http_url)


def _stay_up(args, url: str) -> None:
    keep = sys.stdin.isatty() if args.keep_serving is None else args.keep_serving
    if keep:
        say(f"the dashboard stays up at {url} with the finished run; Ctrl-C ends the demo")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    elif args.linger_s > 0:
        say(f"the dashboard stays up for {args.linger_s:.0f} s at {url} (Ctrl-C ends it)")
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.linger_s)
    say(
        f"the dashboard has closed with the demo. To look again: `pbkv report "
        f"{args.out / 'demo.json'} --out demo.html` (this run's figures), or `pbkv serve "
        f"--model {args.out / 'model'}` (a live dashboard for new traffic); `pbkv demo "
        "--keep-serving` keeps this one up until Ctrl-C"
    )
