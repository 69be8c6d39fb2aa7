"""``ServerThread``: a ``PbkvServer`` on its own event loop in a background thread, for
synchronous callers (the demo, tests, benchmarks). Contract: ``start`` returns once the
server serves; ``stop`` drains it (``PbkvServer.stop``), stops the loop and joins the thread,
and does nothing twice."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from pbkv.service.addons import ServeAddon
from pbkv.service.config import ServiceConfig
from pbkv.service.server import PbkvServer


class ServerThread:
    """A ``PbkvServer`` on its own event loop in a background thread, for synchronous
    callers (the demo, tests, benchmarks)::

        with ServerThread(config) as server:
            client = PbkvClient(f"127.0.0.1:{server.port}")
    """

    def __init__(
        self, config: ServiceConfig, manager=None, addons: Sequence[ServeAddon] = ()
    ) -> None:
        self.server = PbkvServer(config, manager, addons=addons)
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
