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
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from pbkv.service.addons import ServeAddon
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
        self,
        config: ServiceConfig,
        manager=None,
        *,
        wall_clock: Callable[[], float] = time.time,
        addons: Sequence[ServeAddon] = (),
    ) -> None:
        self.config = config
        self._manager = manager
        self.addons = tuple(addons)
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
        self.otlp = None  # the OtlpReceiver when OTLP is enabled (service/otlp.py)
        self.otlp_port: int | None = None  # OTLP's own port, when it has one
        self._otlp_server: grpc.aio.Server | None = None
        self._otlp_tick: asyncio.Task[None] | None = None
        self._otlp_servicer = None
        self.replica = None  # cluster mode: the cluster.replica.Replica of this process
        self._forwarder = None
        self.cpu_meter: CpuMeter | None = None

    async def start(self) -> None:
        cfg = self.config
        if cfg.otlp_enabled:
            from pbkv.service.otlp import import_trace_service

            import_trace_service()  # OtelMissing before anything is opened
        model = ModelInfo(None, "", None)
        predictor = None
        if cfg.model_path is not None:
            predictor, model = await asyncio.to_thread(load_model_info, cfg.model_path)
        carrier = None
        if cfg.cluster_url is not None and predictor is not None:
            from pbkv.service.cluster.follower import CarriedPredictor

            predictor = carrier = CarriedPredictor(predictor)
        manager = self._manager or build_manager(cfg, predictor)
        if self._manager is not None and predictor is not None:
            manager.set_predictor(predictor)
        if cfg.cluster_url is not None:
            from pbkv.service.cluster.log import PartitionLog
            from pbkv.service.cluster.replica import Replica

            self.replica = Replica(cfg, manager, carrier, stats=lambda: self.servicer.stats_dict())
            wait = (cfg.cluster_wait_replicas, cfg.cluster_wait_timeout_ms)
            store = await asyncio.to_thread(PartitionLog, cfg.cluster_url, self.replica.keys, *wait)
        else:
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
        if self.replica is None:
            events = await asyncio.to_thread(lambda: list(store.active_events()))
            ended = await asyncio.to_thread(store.ended_workflows, cfg.recent_ended)
            self.rebuilt_workflows = self.orchestrator.rebuild(events, ended)
        self._recorder.start()

        tokens = TokenTable.from_config(cfg)
        server = self._grpc_server(tokens)
        pb_grpc.add_OrchestratorServicer_to_server(self.orchestrator, server)
        pb_grpc.add_EngineLinkServicer_to_server(self.engine_link, server)
        pb_grpc.add_OperatorServicer_to_server(self.servicer, server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [pbkv_pb2.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]
        if cfg.otlp_enabled:
            names.append(self._add_otlp(server))
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.port = self._bind(server, cfg.target)
        if self.replica is not None:
            await self._join_cluster()
        await server.start()
        self._server = server
        if cfg.otlp_port is not None:
            await self._start_otlp_server(tokens)
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
        for addon in self.addons:
            await addon.start(self)

    def _grpc_server(self, tokens: TokenTable) -> grpc.aio.Server:
        cfg = self.config
        return grpc.aio.server(
            interceptors=[GateInterceptor(tokens)],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        cfg = self.config
        try:
            if cfg.tls_cert_file is not None:
                creds = grpc.ssl_server_credentials(
                    [(cfg.tls_key_file.read_bytes(), cfg.tls_cert_file.read_bytes())]
                )
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..." (port in use)
            raise OSError(str(exc)) from None
        if port == 0:
            raise OSError(f"cannot bind {address}")
        return port

    def _add_otlp(self, server: grpc.aio.Server) -> str:
        """The OTLP receiver on ``server`` (and its timer); returns the service name."""
        from pbkv.service.otlp import SERVICE_NAME, OtlpReceiver, trace_service

        assert self.orchestrator is not None and self.servicer is not None
        self.otlp = OtlpReceiver(self.orchestrator, self.config.otlp_limits, wall_clock=self._wall)
        servicer, add = trace_service(self.otlp)
        add(servicer, server)
        self._otlp_servicer = (servicer, add)
        self.servicer.stats_sections["otlp"] = self.otlp.stats
        self._otlp_tick = asyncio.get_running_loop().create_task(self.otlp.run())
        return SERVICE_NAME

    async def _start_otlp_server(self, tokens: TokenTable) -> None:
        """OTLP alone (and health checks) on ``otlp_port``, the same gate and TLS."""
        servicer, add = self._otlp_servicer
        server = self._grpc_server(tokens)
        add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.otlp_port = self._bind(server, f"{self.config.host}:{self.config.otlp_port}")
        await server.start()
        self._otlp_server = server

    async def _join_cluster(self) -> None:
        """Cluster mode: mirror every partition, take a share, route the rest (before the
        first call is accepted)."""
        from pbkv.service.cluster.forward import Forwarder

        replica = self.replica
        assert replica is not None and self.engine_link is not None
        engine_link = self.engine_link
        replica.wait_flushed = self._recorder.wait_idle
        replica.log = self._recorder.store
        replica.on_engines_lost = lambda parts: engine_link.drop_engines(
            replica.keys.engine_partition, parts
        )
        self.servicer.wrap_predictor = replica.wrap_predictor
        self.servicer.cluster_stats = lambda: {**replica.stats(), **self._forwarder.counters}
        self._forwarder = Forwarder(replica, self._recorder)
        await replica.start(self.config.cluster_advertise or f"{self.config.host}:{self.port}")
        self.rebuilt_workflows = self.servicer.manager.active_count()
        self.orchestrator.router = self.engine_link.router = self._forwarder

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
        for addon in self.addons:
            await addon.stop()
        for task in (self._watch, self._otlp_tick):
            if task is not None:
                task.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._otlp_server is not None:
            await self._otlp_server.stop(grace)
        if self.replica is not None:  # hand every partition over while calls still forward
            await self._bounded(self.replica.drain(), "handing partitions over")
        if self._server is not None:
            await self._server.stop(grace)
        if self._forwarder is not None:
            await self._bounded(self._forwarder.close(), "closing channels to replicas")
        if self.replica is not None:
            await self._bounded(self.replica.close(), "closing the cluster's connections")
        if self._dashboard is not None:
            await self._dashboard.stop()
        if self._recorder is not None:
            await self._recorder.drain()
            await asyncio.to_thread(self._recorder.store.close)

    async def _bounded(self, step, what: str) -> None:
        """A cluster shutdown step, given at most grace + two leases (then skipped: the
        leases expire by themselves)."""
        limit = self.config.grace_s + 2 * self.config.cluster_lease_s
        try:
            await asyncio.wait_for(step, limit)
        except TimeoutError:
            log.warning("shutdown: %s took over %.1f s; skipped", what, limit)

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


GC_YOUNG_THRESHOLD = 20_000


async def serve_forever(
    config: ServiceConfig, *, announce=print, addons: Sequence[ServeAddon] = ()
) -> int:
    """Run until SIGTERM/SIGINT (graceful) with SIGHUP reloading the model."""
    server = PbkvServer(config, addons=addons)
    await server.start()
    # What start-up built lives as long as the process: out of the collector's way, so a full
    # collection scans only what serving allocates (it stalled health checks for >100 ms).
    # Young objects: a collection every GC_YOUNG_THRESHOLD allocations, not Python's 700 (an
    # event makes dozens of short-lived objects that reference counting frees first).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
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
    if server.otlp is not None:
        ports = [str(p) for p in (server.port, server.otlp_port) if p is not None]
        announce(f"pbkv serve: OTLP traces (TraceService/Export) on port {' and '.join(ports)}")
    if server.http_url:
        announce(f"pbkv serve: dashboard {server.http_url}")
    for addon in server.addons:
        announce(f"pbkv serve: {addon.describe()}")
    announce(f"READY {server.port}")
    sys.stdout.flush()
    await stop.wait()
    announce("pbkv serve: shutting down (draining in-flight calls)")
    await server.stop()
    return 0


def __getattr__(name: str):
    """``ServerThread`` moved to ``server_thread.py``; ``from pbkv.service.server import
    ServerThread`` keeps working (imported lazily: that module imports this one)."""
    if name == "ServerThread":
        from pbkv.service.server_thread import ServerThread

        return ServerThread
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
