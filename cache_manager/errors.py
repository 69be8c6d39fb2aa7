"""Errors the cache manager raises for bad input. All are ``ValueError`` subclasses, and every
message names the argument or field at fault; an operation that raises changes nothing."""

from __future__ import annotations


class CacheManagerError(ValueError):
    """Bad input to the cache manager (the operation was rejected and had no effect)."""


class UnknownWorkflow(CacheManagerError):
    pass


class DuplicateWorkflow(CacheManagerError):
    pass


class EndedWorkflow(CacheManagerError):
    pass


class OutOfOrderStep(CacheManagerError):
    pass


class UnknownEngine(CacheManagerError):
    pass


class UnknownBlock(CacheManagerError):
    """An event named a block the directory does not hold (in that tier)."""


class HashChainConflict(CacheManagerError):
    """A block hash arrived with a parent different from the one the directory records."""


class UnknownRequest(CacheManagerError):
    pass
