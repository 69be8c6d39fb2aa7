"""The asyncio gRPC server: servicer + trace store + dashboard + model hot reload.

Start-up order matters for durability: open the store, rebuild unfinished workflows from it,
start the recorder, and only then accept calls. Shutdown (SIGTERM) is the reverse: stop
accepting, let in-flight calls finish for ``grace_s``, drain the recorder, close the store.
SIGHUP (and a change of the model artifact's ``metadata.json``, polled every
``watch_model_s``) reloads the model without touching open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from pbkv.service.auth import GateInterceptor, TokenTable
from pbkv.service.config import ServiceConfig
from pbkv.service.cpu_meter import CpuMeter
from pbkv.service.recorder import Recorder
from pbkv.service.servicers.engines import EngineLinkServicer
from pbkv.service.servicers.operator import ModelInfo, OperatorServicer, load_model_info
from pbkv.service.servicers.orchestrator import OrchestratorServicer
from pbkv.service.servicers.wiring import Wiring
from pbkv.service.stores import open_store
from pbkv.v1 import pbkv_pb2
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICES = ("Orchestrator", "EngineLink", "Operator")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # what the service sends (plans, stats) at most


def build_manager(config: ServiceConfig, predictor=None):
    from dataclasses import replace

    from pbkv.cache_manager.manager import CacheManager

    # Ended workflow ids are remembered (FAILED_PRECONDITION for late calls) up to a bound.
    return CacheManager(
        replace(config.manager, ended_memory=config.recent_ended), predictor=predictor
    )


def artifact_signature(path: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, mtime_ns, size) of every file in the model directory; None while unreadable."""
    try:
        return tuple(
            sorted(
                (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                for entry in path.iterdir()
            )
        )
    except OSError:
        return None


def dashboard_check(tokens: TokenTable) -> Callable[[str], bool] | None:
    """With auth on, the dashboard (every tenant's stats) takes an operator or dashboard
    token; None: auth is off, the dashboard is open (on its loopback default)."""
    if not tokens:
        return None

    def authorize(token: str) -> bool:
        who = tokens.lookup(token)
        return who is not None and who.sees_all_tenants

    return authorize


class PbkvServer:
    """``await start()``, then ``port`` / ``http_url``; ``await stop()`` drains. One servicer
    per service: ``orchestrator``, ``engine_link`` and ``servicer`` (the Operator one: stats,
    model, ``manager``, ``recorder``)."""

    def __init__(
        self, config: ServiceConfig, manager=None, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self._manager = manager
        self._wall = wall_clock
        self.servicer: OperatorServicer | None = None
        self.orchestrator: OrchestratorServicer | None = None
        self.engine_link: EngineLinkServicer | None = None
        self.port: int | None = None
        self.http_url: str | None = None
        self.rebuilt_workflows = 0
        self._server: grpc.aio.Server | None = None
        self._recorder: Recorder | None = None
        self._dashboard = None
        self._health: health_aio.HealthServicer | None = None
        self._watch: asyncio.Task[None] | None = None
        self.cpu_meter: CpuMeter | None = None

    async def start(self) -> None:
        cfg = self.config
        model = ModelInfo(None, "", None)
        predictor = None
        if cfg.model_path is not None:
            predictor, model = await asyncio.to_thread(load_model_info, cfg.model_path)
        manager = self._manager or build_manager(cfg, predictor)
        if self._manager is not None and predictor is not None:
            manager.set_predictor(predictor)
        store = await asyncio.to_thread(open_store, cfg)
        metrics = None
        if cfg.http_port is not None:
            from pbkv.dashboard.metrics import PbkvMetrics

            metrics = PbkvMetrics()
        self._recorder = Recorder(store, cfg.max_pending_events)
        wiring = Wiring(manager, cfg, metrics.observe_rpc if metrics else None)
        self.orchestrator = OrchestratorServicer(wiring, self._recorder, wall_clock=self._wall)
        self.cpu_meter = CpuMeter.from_env()
        if self.cpu_meter is not None:
            self.orchestrator.instrument(self.cpu_meter)
        self.engine_link = EngineLinkServicer(wiring)
        self.servicer = OperatorServicer(wiring, self._recorder, self.engine_link, model=model)
        events = await asyncio.to_thread(lambda: list(store.active_events()))
        ended = await asyncio.to_thread(store.ended_workflows, cfg.recent_ended)
        self.rebuilt_workflows = self.orchestrator.rebuild(events, ended)
        self._recorder.start()

        tokens = TokenTable.from_config(cfg)
        server = grpc.aio.server(
            interceptors=[GateInterceptor(tokens)],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_OrchestratorServicer_to_server(self.orchestrator, server)
        pb_grpc.add_EngineLinkServicer_to_server(self.engine_link, server)
        pb_grpc.add_OperatorServicer_to_server(self.servicer, server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [pbkv_pb2.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        address = cfg.target
        if cfg.tls_cert_file is not None:
            creds = grpc.ssl_server_credentials(
                [(cfg.tls_key_file.read_bytes(), cfg.tls_cert_file.read_bytes())]
            )
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        await server.start()
        self._server = server
        for name in ("", *names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if metrics is not None:
            from pbkv.dashboard.http import DashboardServer

            self._dashboard = DashboardServer(
                self.servicer.stats_dict,
                cfg.http_host,
                cfg.http_port,
                metrics,
                authorize=dashboard_check(tokens),
            )
            await self._dashboard.start()
            self.http_url = self._dashboard.url
        if cfg.model_path is not None and cfg.watch_model_s is not None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_model())

    async def reload_model(self, path: Path | None = None) -> None:
        path = path or self.config.model_path
        if path is None or self.servicer is None:
            log.warning("reload requested but no model_path is configured")
            return
        try:
            await self.servicer.reload_model(path)
        except Exception as exc:  # noqa: BLE001 - a bad artifact must not stop the service
            log.error("model reload from %s failed: %s", path, exc)

    async def _watch_model(self) -> None:
        """Reload when the artifact's files change. A failed reload is logged once and not
        retried until the files change again (no log line per poll)."""
        path = self.config.model_path
        assert path is not None and self.servicer is not None
        seen = artifact_signature(path)
        while True:
            await asyncio.sleep(self.config.watch_model_s)
            current = artifact_signature(path)
            if current is None or current == seen:
                continue  # unchanged, or being replaced right now: look again next time
            seen = current
            await self.reload_model(path)

    async def stop(self, grace_s: float | None = None) -> None:
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._watch is not None:
            self._watch.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._dashboard is not None:
            await self._dashboard.stop()
        if self._recorder is not None:
            await self._recorder.drain()
            await asyncio.to_thread(self._recorder.store.close)

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve_forever(config: ServiceConfig, *, announce=print) -> int:
    """Run until SIGTERM/SIGINT (graceful) with SIGHUP reloading the model."""
    server = PbkvServer(config)
    await server.start()
    # What start-up built lives as long as the process: out of the collector's way, so a full
    # collection scans only what serving allocates (it stalled health checks for >100 ms).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(server.reload_model()))
    if server.cpu_meter is not None:  # PBKV_CPU_METER: a CPU snapshot on SIGUSR1
        loop.add_signal_handler(signal.SIGUSR1, server.cpu_meter.write)
    announce(
        f"pbkv serve: gRPC on {config.host}:{server.port} "
        f"({'TLS' if config.tls_cert_file else 'plaintext'}"
        f"{', bearer tokens' if config.auth_token or config.token_grants else ''}), store "
        f"{server.servicer.recorder.store.describe()}, "
        f"{server.rebuilt_workflows} workflows rebuilt"
    )
    if server.http_url:
        announce(f"pbkv serve: dashboard {server.http_url}")
    announce(f"READY {server.port}")
    sys.stdout.flush()
    await stop.wait()
    announce("pbkv serve: shutting down (draining in-flight calls)")
    await server.stop()
    return 0


class ServerThread:
    """A ``PbkvServer`` on its own event loop in a background thread, for synchronous
    callers (the demo, tests, benchmarks)::

        with ServerThread(config) as server:
            client = PbkvClient(f"127.0.0.1:{server.port}")
    """

    def __init__(self, config: ServiceConfig, manager=None) -> None:
        import threading

        self.server = PbkvServer(config, manager)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pbkv-server", daemon=True
        )

    def start(self, timeout_s: float = 60.0) -> PbkvServer:
        self._thread.start()
        self.call(self.server.start(), timeout_s)
        return self.server

    def call(self, coro, timeout_s: float = 60.0):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def run(self, fn: Callable[[], object], timeout_s: float = 60.0):
        """Run a plain function on the server's loop thread (the manager is not
        thread-safe: read it there)."""

        async def wrapper():
            return fn()

        return self.call(wrapper(), timeout_s)

    def stop(self, grace_s: float = 1.0, timeout_s: float = 60.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.server.stop(grace_s), timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
            self._loop.close()

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def target(self) -> str:
        return f"{self.server.config.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
