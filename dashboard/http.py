"""The dashboard's HTTP server (aiohttp), run beside the gRPC server in the service's loop.

Routes::

    /                   the dashboard page (static/index.html; polls /api/stats)
    /static/*           its assets (shipped in the package: no CDN, no internet)
    /api/stats          JSON view of the latest stats (dashboard/view.py), with RPC and history
    /metrics            Prometheus text format (dashboard/metrics.py)
    /api/bench          the bench result JSON files found under ``bench_dir``
    /api/bench/{name}   one of them, as stored
    /bench/{name}       one of them as a self-contained HTML report (dashboard/report.py)

With ``authorize`` set (the service does when auth is on) every route needs a token it
accepts: ``Authorization: Bearer <token>`` (scrapers), HTTP basic with the token as password
(browsers prompt for it), or ``?token=<token>`` once, which sets an HttpOnly cookie and
redirects to the same page without the token in the address.

``stats_source`` is called on the server's loop thread: for ``/api/stats``, for ``/metrics``
and every ``sample_interval_s`` for the history ring. It returns the stats dict (or an object
with ``to_dict()``, such as ``ManagerStats``) and must be safe to call from that thread. When it
fails the server keeps serving the last good snapshot and says so (``error`` in the JSON).

Only that call runs on the loop: parsing, the Prometheus exposition and the JSON view work on
immutable values in a worker thread, so a scrape of a large stats dict (``python -m
pbkv.dashboard.bench``: ~100 ms at 1,000 agents) does not hold up the gRPC handlers sharing
the loop for its whole duration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from pbkv.dashboard.history import StatsHistory
from pbkv.dashboard.metrics import CONTENT_TYPE, PbkvMetrics
from pbkv.dashboard.schema import Stats
from pbkv.dashboard.view import build_view

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8377
NO_CACHE = {"Cache-Control": "no-store"}
TOKEN_COOKIE = "pbkv_token"

StatsSource = Callable[[], Mapping[str, Any] | Any]


class DashboardServer:
    """Serves the dashboard, ``/api/stats`` and ``/metrics``; ``await start()`` / ``stop()``.

    ``registry`` is the ``PbkvMetrics`` the service also feeds with ``observe_rpc`` (a bare
    ``CollectorRegistry`` is wrapped; ``None`` makes a private one). ``port=0`` picks a free
    port (read ``port`` / ``url`` after ``start``).
    """

    def __init__(
        self,
        stats_source: StatsSource,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        registry: PbkvMetrics | CollectorRegistry | None = None,
        *,
        bench_dir: str | Path | None = None,
        sample_interval_s: float = 1.0,
        history_capacity: int = 600,
        clock: Callable[[], float] = time.time,
        authorize: Callable[[str], bool] | None = None,
    ) -> None:
        if sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0, got {sample_interval_s}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self.metrics = registry if isinstance(registry, PbkvMetrics) else PbkvMetrics(registry)
        self.history = StatsHistory(history_capacity, clock)
        self.bench_dir = Path(bench_dir).resolve() if bench_dir is not None else None
        self._stats_source = stats_source
        self._authorize = authorize  # token -> allowed; None: no auth
        self._host, self._port = host, port
        self._sample_interval_s = sample_interval_s
        self._clock = clock
        self._last_error: str | None = None
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("DashboardServer already started")
        runner = web.AppRunner(self.make_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"dashboard cannot listen on {self._host}:{self._port}: {exc.strerror or exc}",
            ) from exc
        self._runner = runner
        self._port = runner.addresses[0][1]
        self.sample()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth] if self._authorize else [])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/stats", self._api_stats)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/bench", self._bench_list)
        app.router.add_get("/api/bench/{name:.+}", self._bench_json)
        app.router.add_get("/bench/{name:.+}", self._bench_report)
        app.router.add_static("/static", STATIC_DIR)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        assert self._authorize is not None
        query_token = request.query.get("token")
        token = query_token or _request_token(request)
        if not token or not self._authorize(token):
            raise web.HTTPUnauthorized(
                text="the pbkv dashboard needs a token: Authorization: Bearer <token>, HTTP "
                "basic with the token as password, or ?token=<token> once\n",
                headers={"WWW-Authenticate": 'Basic realm="pbkv dashboard"', **NO_CACHE},
            )
        if query_token:  # keep it out of the address bar and the history from now on
            rest = [(k, v) for k, v in request.query.items() if k != "token"]
            response = web.HTTPFound(request.rel_url.with_query(rest or None), headers=NO_CACHE)
            response.set_cookie(
                TOKEN_COOKIE, query_token, httponly=True, samesite="Strict", path="/"
            )
            raise response
        return await handler(request)

    # -- stats -----------------------------------------------------------------------------
    def refresh(self) -> Stats | None:
        """Pull ``stats_source`` into the metrics; the latest good snapshot (None: none yet)."""
        try:
            stats = self.metrics.update_from_stats(self._pull())
        except Exception as exc:  # noqa: BLE001 - a broken source must not take the dashboard down
            return self._failed(exc)
        self._last_error = None
        return stats

    async def refresh_async(self) -> Stats | None:
        """``refresh`` with only the ``stats_source`` call on the loop thread."""
        try:
            raw = self._pull()
            stats = await asyncio.to_thread(self.metrics.update_from_stats, raw)
        except Exception as exc:  # noqa: BLE001 - a broken source must not take the dashboard down
            return self._failed(exc)
        self._last_error = None
        return stats

    def _pull(self) -> Mapping[str, Any]:
        raw = self._stats_source()
        if not isinstance(raw, Mapping) and hasattr(raw, "to_dict"):
            raw = raw.to_dict()
        return raw

    def _failed(self, exc: Exception) -> Stats | None:
        self._last_error = f"stats source failed: {type(exc).__name__}: {exc}"
        log.warning("%s", self._last_error)
        return self.metrics.stats

    def sample(self) -> None:
        """Refresh and append a snapshot to the history ring."""
        stats = self.refresh()
        if stats is not None and self._last_error is None:
            self.history.record(stats)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sample_interval_s)
            stats = await self.refresh_async()
            if stats is not None and self._last_error is None:
                self.history.record(stats)

    # -- handlers --------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    async def _api_stats(self, request: web.Request) -> web.Response:
        stats = await self.refresh_async()
        if stats is None:
            return web.json_response(
                {"error": self._last_error or "no stats yet"}, status=503, headers=NO_CACHE
            )
        history, error, now_s = self.history.series(), self._last_error, self._clock()

        def render() -> str:
            view = build_view(
                stats, history=history, rpc=self.metrics.rpc_summary(), generated_s=now_s
            )
            return json.dumps({**view, "error": error})

        return web.Response(
            text=await asyncio.to_thread(render), content_type="application/json", headers=NO_CACHE
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.refresh_async()
        body = await asyncio.to_thread(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, **NO_CACHE})

    async def _bench_list(self, request: web.Request) -> web.Response:
        files = []
        if self.bench_dir is not None and self.bench_dir.is_dir():
            for path in sorted(self.bench_dir.rglob("*.json")):
                stat = path.stat()
                files.append(
                    {
                        "name": path.relative_to(self.bench_dir).as_posix(),
                        "size_bytes": stat.st_size,
                        "modified_s": stat.st_mtime,
                    }
                )
        return web.json_response(
            {"bench_dir": str(self.bench_dir) if self.bench_dir else None, "files": files},
            headers=NO_CACHE,
        )

    def _bench_path(self, request: web.Request) -> Path:
        name = request.match_info["name"]
        if self.bench_dir is None:
            raise web.HTTPNotFound(text="no bench directory configured")
        path = (self.bench_dir / name).resolve()
        if path.suffix != ".json" or not path.is_relative_to(self.bench_dir) or not path.is_file():
            raise web.HTTPNotFound(text=f"no bench result {name!r}")
        return path

    async def _bench_json(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            self._bench_path(request), headers={"Content-Type": "application/json", **NO_CACHE}
        )

    async def _bench_report(self, request: web.Request) -> web.Response:
        from pbkv.dashboard.report import ReportError, load_bench, render_report

        path = self._bench_path(request)
        try:
            html = render_report(load_bench(path), title=path.name)
        except ReportError as exc:
            raise web.HTTPUnprocessableEntity(text=str(exc)) from None
        return web.Response(text=html, content_type="text/html", headers=NO_CACHE)


def _request_token(request: web.Request) -> str | None:
    """The token of a bearer or basic ``Authorization`` header, or of the cookie."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return request.cookies.get(TOKEN_COOKIE)


class ThreadedDashboard:
    """Runs a ``DashboardServer`` on its own event loop in a daemon thread, for sync callers
    (tests, the simulated engine's CLI). Use as a context manager or call ``start``/``stop``."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pbkv-dashboard", daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> ThreadedDashboard:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout_s)
        except BaseException:
            self._end_loop(timeout_s)
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
        finally:
            self._end_loop(timeout_s)

    def _end_loop(self, timeout_s: float) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def submit(self, coro: Any) -> Any:
        """Schedule a coroutine on the server's loop; returns a ``concurrent.futures.Future``."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run ``fn`` on the server's loop thread (e.g. ``server.sample``) and return its value."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ThreadedDashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
