"""``IdentityMemo``: what was derived from an immutable object, found again by its identity.

Predictors that cache their forecasts hand back the same agents tuple for every workflow at
the same point, so the per-step work downstream of them (checking the forecast, recalibrating
it, writing it as protobuf) repeats on the very same object. Hashing the object would cost
about what the work does; its ``id`` costs nothing. An entry keeps the object itself, so its
``id`` cannot be given to another object while the entry lives; with ``max_entries`` held,
every entry is forgotten at once (the next calls derive anew)::

    memo = IdentityMemo(max_entries=1_024)
    value = memo.get(agents, horizon)          # None: not remembered for (agents, horizon)
    if value is None:
        value = memo.put(agents, horizon, derive(agents, horizon))

Contract: only for objects that never change (tuples of frozen dataclasses of tuples); a hit
needs the same object *and* an equal ``extra`` (what else the value depends on).
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    def __init__(self, max_entries: int = 1_024) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: dict[int, tuple[object, object, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, obj: object, extra: object = None) -> V | None:
        """The value put for this very ``obj`` with an equal ``extra``, else None."""
        hit = self._entries.get(id(obj))
        if hit is not None and hit[0] is obj and hit[1] == extra:
            return hit[2]
        return None

    def put(self, obj: object, extra: object, value: V) -> V:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[id(obj)] = (obj, extra, value)
        return value
