"""How the connector talks to pbkv: an ``EngineLink`` takes events and hands out the latest
plan, and neither call may block the scheduler thread.

The connector picks its link by name (``kv_connector_extra_config["link"]``) from ``LINKS``:

    none        ``NullLink``: no pbkv, vLLM's own LRU
    in-process  the link registered for the engine id in ``IN_PROCESS_LINKS`` (a ``ManagerLink``
                or, in tests, a ``StaticLink``); ``NullLink`` when there is none
    static      a fresh ``StaticLink`` (plan set by hand)
    service     ``service_link.ServiceLink``, the pbkv service over gRPC

* ``ManagerLink`` drives an in-process ``CacheManager`` (one process: the replayer, tests,
  benchmarks). It needs the engine core in the caller's process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the connector finds it by engine id in
  ``IN_PROCESS_LINKS``, the only bridge between vLLM's connector factory and the caller.
* ``service_link.ServiceLink`` wraps the service's ``EngineLinkClient`` (gRPC Attach stream,
  background thread, bounded outbox, latest-wins plan slot).

Fail-open contract: any error inside a link is swallowed and counted; ``latest_plan`` returns
``None`` (plain LRU) when there is no plan, the plan is stale or the service is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pbkv.cache_manager.events import CachePlan, EngineEvent
from pbkv.registry import Registry

log = logging.getLogger(__name__)


class EngineLink(Protocol):
    def attach(self, *, gpu_blocks: int, cpu_blocks: int, tokens_per_block: int) -> None:
        """Called once the block pool is bound (its size goes into a service hello)."""

    def resync_needed(self) -> bool:
        """True once after the other side lost what it was told (a reconnect): the connector
        then announces its whole cache again."""

    def send(self, event: EngineEvent) -> None:
        """Queue an event for pbkv; never blocks, may drop under overload."""

    def latest_plan(self) -> CachePlan | None:
        """The newest usable plan, or ``None`` for plain LRU."""

    def close(self) -> None: ...


class NullLink:
    """No pbkv at all: the engine runs stock LRU (the benchmark's baseline)."""

    def attach(self, *, gpu_blocks: int, cpu_blocks: int, tokens_per_block: int) -> None:
        return None

    def resync_needed(self) -> bool:
        return False

    def send(self, event: EngineEvent) -> None:
        return None

    def latest_plan(self) -> CachePlan | None:
        return None

    def close(self) -> None:
        return None


class ManagerLink:
    """Synchronous link to an in-process cache manager (``on_engine_event`` / ``plan``).

    A plan is recomputed only when an event was sent since the last one (decode-only steps
    change nothing the manager sees; the orchestrator's calls for a request land with its
    ``RequestFinished``)."""

    def __init__(self, manager: Any, engine_id: str) -> None:
        self.manager = manager
        self.engine_id = engine_id
        self.num_errors = 0
        self.num_plans = 0
        self.events: list[EngineEvent] | None = None  # set to a list to record (tests)
        self._plan: CachePlan | None = None
        self._stale = True

    def attach(self, *, gpu_blocks: int, cpu_blocks: int, tokens_per_block: int) -> None:
        return None  # whoever made the manager registered the engine with it

    def resync_needed(self) -> bool:
        return False  # the manager lives as long as the link

    def send(self, event: EngineEvent) -> None:
        self._stale = True
        if self.events is not None:
            self.events.append(event)
        try:
            self.manager.on_engine_event(event)
        except Exception:  # fail open: a manager bug must not stop serving
            self.num_errors += 1
            log.exception("pbkv manager rejected %s", type(event).__name__)

    def latest_plan(self) -> CachePlan | None:
        if self._stale:
            self._stale = False
            try:
                self._plan = self.manager.plan(self.engine_id)
                self.num_plans += 1
            except Exception:
                self.num_errors += 1
                self._plan = None
                log.exception("pbkv manager failed to plan")
        plan = self._plan
        return None if plan is None or plan.fallback_lru else plan

    def close(self) -> None:
        return None


class StaticLink:
    """A link whose plan is set by hand (tests, fault injection); records what it is sent."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.events: list[EngineEvent] = []
        self.plan: CachePlan | None = None
        self.fail = False  # True: behave like a dead service

    def attach(self, *, gpu_blocks: int, cpu_blocks: int, tokens_per_block: int) -> None:
        return None

    def resync_needed(self) -> bool:
        return False

    def send(self, event: EngineEvent) -> None:
        if not self.fail:
            self.events.append(event)

    def latest_plan(self) -> CachePlan | None:
        return None if self.fail else self.plan

    def close(self) -> None:
        return None


# engine_id -> link, for engines whose core runs in this process (see module docstring).
IN_PROCESS_LINKS: dict[str, EngineLink] = {}

# name -> factory(engine_id, service_target, token=None, tls_ca_file=None): the link kinds the
# connector can be configured with (only ``service`` uses the target, token and CA file)
LINKS: Registry[EngineLink] = Registry("engine link")


@LINKS.register("none")
def _null_link(engine_id: str, service_target: str, **_service: object) -> EngineLink:
    return NullLink()


@LINKS.register("in-process")
def _in_process_link(engine_id: str, service_target: str, **_service: object) -> EngineLink:
    link = IN_PROCESS_LINKS.get(engine_id)
    if link is None:
        log.info(
            "pbkv: no in-process link for engine %r; running plain LRU "
            "(is VLLM_ENABLE_V1_MULTIPROCESSING=0?)",
            engine_id,
        )
        return NullLink()
    return link


@LINKS.register("static")
def _static_link(engine_id: str, service_target: str, **_service: object) -> EngineLink:
    return StaticLink()


@LINKS.register("service")
def _service_link(
    engine_id: str, service_target: str, token: str | None = None, tls_ca_file: Any = None
) -> EngineLink:
    from pbkv.engine_adapter.vllm.service_link import ServiceLink

    return ServiceLink(service_target, engine_id, token=token, tls_ca_file=tls_ca_file)
