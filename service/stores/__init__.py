"""Trace stores behind one interface, chosen by name (``ServiceConfig.store``)."""

from __future__ import annotations

from pbkv.registry import Registry
from pbkv.service.config import ServiceConfig
from pbkv.service.stores.base import EventRecord, StoreError, TraceStore

STORES: Registry[TraceStore] = Registry("store")


@STORES.register("sqlite")
def _sqlite(config: ServiceConfig) -> TraceStore:
    from pbkv.service.stores.sqlite_store import SqliteStore

    return SqliteStore(config.store_path)


@STORES.register("redis")
def _redis(config: ServiceConfig) -> TraceStore:
    from pbkv.service.stores.redis_store import RedisStore

    return RedisStore(config.redis_url, config.redis_prefix)


def open_store(config: ServiceConfig) -> TraceStore:
    return STORES.create(config.store, config)


__all__ = ["STORES", "EventRecord", "StoreError", "TraceStore", "open_store"]
