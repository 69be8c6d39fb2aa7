"""Parts of ``pbkv serve`` that live in a later layer and plug in by name.

The service may not import ``engine_adapter`` (``tests/test_layering.py``), yet shadow mode
(``engine_adapter/shadow``) runs inside ``pbkv serve``. It registers a factory here when the
CLI loads its commands (``engine_adapter/cli.py``); ``pbkv serve`` asks for it by name. An
add-on starts after the server (its manager and servicers exist) and stops before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pbkv.registry import Registry

if TYPE_CHECKING:
    from pbkv.service.config import ServiceConfig
    from pbkv.service.server import PbkvServer


class ServeAddon(Protocol):
    async def start(self, server: PbkvServer) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str: ...


class AddonFactory(Protocol):
    def __call__(self, config: ServiceConfig) -> ServeAddon: ...


ADDONS: Registry[ServeAddon] = Registry("pbkv serve add-on")


def configured_addons(config: ServiceConfig) -> list[ServeAddon]:
    """The add-ons ``config`` asks for (today: ``shadow`` when ``shadow_endpoint`` is set)."""
    if config.shadow_endpoint is None:
        return []
    return [ADDONS.create("shadow", config)]
