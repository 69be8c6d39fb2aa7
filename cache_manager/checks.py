"""Validation of the components' config dataclasses (each checks itself on construction)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pbkv.cache_manager.errors import CacheManagerError


def check_ints(owner: object, lows: dict[str, int]) -> None:
    """Each named field of ``owner`` is an int (not a bool) >= its low bound."""
    for name, low in lows.items():
        value = getattr(owner, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(
                f"{type(owner).__name__}.{name} must be an int >= {low}, got {value!r}"
            )


def check_numbers(
    owner: object, names: tuple[str, ...], low: float = 0.0, high: float = math.inf
) -> None:
    """Each named field of ``owner`` is a number (not a bool, not NaN) in [low, high]."""
    for name in names:
        value = getattr(owner, name)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise ValueError(
                f"{type(owner).__name__}.{name} must be a number {bounds}, got {value!r}"
            )


def check_type(owner: object, name: str, cls: type) -> None:
    value = getattr(owner, name)
    if not isinstance(value, cls):
        raise ValueError(f"{type(owner).__name__}.{name} must be a {cls.__name__}, got {value!r}")


def check_choice(owner: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in choices:
        raise ValueError(
            f"{type(owner).__name__}.{name} must be one of {', '.join(choices)}, got {value!r}"
        )


def check_hashes(arg: str, hashes: Iterable[bytes]) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or not h:
            raise CacheManagerError(f"{arg}[{i}] must be non-empty bytes, got {h!r:.40}")


def short_hash(h: bytes | None) -> str:
    return "root" if h is None else h.hex()[:16]
