"""Host-memory KV tier for vLLM that works on the CPU backend (and on CUDA: copies go through
``torch`` indexing on whatever device the KV cache lives on).

Split the way vLLM splits its offload manager and policy:

* ``HostTierIndex`` (scheduler side, pure): which block hashes the tier holds, a capacity bound
  in blocks, LRU recency (refreshed on every lookup, as vLLM's CPU offloading manager does),
  and which to drop when full: first the *spare* copies (of GPU blocks the GPU will not evict
  soon, when the caller names them: the exclusive margin), then the order every engine's
  host tier follows (``cache_manager.plan_order.host_drop_order``: the plan's
  ``host_drop_first``, then the tier's LRU). A block is refused only when every held block
  is pinned. It remembers why it dropped each of its last victims (``drop_reason``: the
  order that chose it), so a later miss on one can be blamed on that order.
* ``HostKVStore`` (worker side, mechanism): the tensors. It only executes the copy orders the
  scheduler sends in the connector metadata each step, in the order saves, loads, drops, so the
  scheduler's index and the worker's store hold the same hashes after every step. Saves go
  first: a prefetch may load into a block whose old content is being saved in the same step.

Saves copy a block's KV from the paged cache at the start of the step that follows its
computation (never the step that computes it, whose KV is not written yet); loads copy KV into
the blocks vLLM allocated for a host-tier hit before the forward pass reads them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from pbkv.cache_manager.events import CachePlan
from pbkv.cache_manager.plan_order import host_drop_order


@dataclass(slots=True)
class HostTierOps:
    """One step's copy orders for the worker (pickled into the connector metadata)."""

    loads: list[tuple[bytes, int]] = field(default_factory=list)  # (hash, dst block id)
    saves: list[tuple[bytes, int]] = field(default_factory=list)  # (hash, src block id)
    drops: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.loads or self.saves or self.drops)


DROP_REASONS = ("spare", "plan", "lru")  # the order that chose a victim (``admit``)
DROPS_REMEMBERED_PER_BLOCK = 8  # victims remembered (for ``drop_reason``) per block of capacity


class HostTierIndex:
    """Scheduler-side view of the host tier: membership, LRU recency and the capacity bound."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"host tier capacity_blocks must be >= 0, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self._lru: OrderedDict[bytes, None] = OrderedDict()  # oldest first
        self._dropped: OrderedDict[bytes, str] = OrderedDict()  # victim -> reason, oldest first
        self.num_saved = 0
        self.num_loaded = 0
        self.num_dropped = 0

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def hashes(self) -> list[bytes]:
        return list(self._lru)

    def touch(self, block_hash: bytes) -> None:
        if block_hash in self._lru:
            self._lru.move_to_end(block_hash)

    def touch_prompt(self, block_hashes: Sequence[bytes]) -> None:
        """A prompt was looked up: every block of it the tier holds becomes most recent, last
        block first so the prompt's head ends most recent (vLLM's ``LRUCachePolicy.touch``;
        the simulator's tier does the same)."""
        for h in reversed(block_hashes):
            if h in self._lru:
                self._lru.move_to_end(h)

    def matched_prefix(self, block_hashes: Iterable[bytes]) -> int:
        """How many of ``block_hashes`` (in order) the tier holds without a gap."""
        n = 0
        for h in block_hashes:
            if h not in self._lru:
                break
            n += 1
        return n

    def admit(
        self,
        block_hash: bytes,
        plan: CachePlan | None = None,
        pinned: frozenset[bytes] = frozenset(),
        spare: Callable[[bytes], bool] = lambda h: False,
    ) -> tuple[bool, list[bytes]]:
        """Make room for ``block_hash`` and add it. Returns (admitted, hashes dropped).

        When the tier is full the victim is the oldest held block that ``spare`` says is a
        spare copy (a GPU block's copy the GPU will not evict soon: it can be written again
        when it nears eviction), else the first of ``plan_order.host_drop_order`` (the plan's
        ``host_drop_first``, then LRU; no plan: LRU). ``pinned`` hashes (loads this step)
        never go; a block is refused only when nothing else can."""
        if block_hash in self._lru or self.capacity_blocks == 0:
            return False, []
        dropped: list[bytes] = []
        if len(self._lru) >= self.capacity_blocks:
            lru = self._lru
            listed = frozenset(plan.host_drop_first) if plan is not None else frozenset()
            spares = ((h, "spare") for h in lru if spare(h))
            ordered = iter(lru) if plan is None else host_drop_order(plan, lru, host_named=listed)
            by_order = ((h, "plan" if h in listed else "lru") for h in ordered)
            victim, reason = next(
                ((h, r) for h, r in chain(spares, by_order) if h in lru and h not in pinned),
                (None, None),
            )
            if victim is None or reason is None:
                return False, []
            del lru[victim]
            dropped.append(victim)
            self._remember_drop(victim, reason)
        self._lru[block_hash] = None
        self._dropped.pop(block_hash, None)
        self.num_saved += 1
        return True, dropped

    def _remember_drop(self, block_hash: bytes, reason: str) -> None:
        self.num_dropped += 1
        self._dropped.pop(block_hash, None)
        self._dropped[block_hash] = reason
        while len(self._dropped) > DROPS_REMEMBERED_PER_BLOCK * self.capacity_blocks:
            self._dropped.popitem(last=False)

    def drop_reason(self, block_hash: bytes) -> str | None:
        """Why the tier last dropped ``block_hash`` (``DROP_REASONS``; ``None``: it holds it,
        never dropped it, or has forgotten: only the last victims are remembered)."""
        return self._dropped.get(block_hash)


@dataclass(slots=True)
class CopyStats:
    """Worker-side copy work (for calibrating the simulator's transfer cost)."""

    saved_blocks: int = 0
    loaded_blocks: int = 0
    copy_s: float = 0.0  # wall seconds executing saves and loads


class HostKVStore:
    """Worker-side tensors of the host tier: one CPU tensor per block hash, all layers stacked.

    ``kv_caches`` maps layer name -> paged KV tensor; ``block_dims`` says which dimension of each
    indexes blocks (found by size at registration)."""

    def __init__(self) -> None:
        self.layers: list[tuple[Any, int]] = []  # (tensor, block dim)
        self.blocks: dict[bytes, list[Any]] = {}
        self.stats = CopyStats()

    def register(self, kv_caches: dict[str, Any], num_blocks: int) -> None:
        self.layers = []
        for name in sorted(kv_caches):
            tensor = kv_caches[name]
            dims = [d for d, size in enumerate(tensor.shape) if size == num_blocks]
            if not dims:
                raise RuntimeError(
                    f"pbkv host tier: layer {name} KV shape {tuple(tensor.shape)} "
                    f"has no dimension of num_blocks={num_blocks}"
                )
            self.layers.append((tensor, dims[0]))

    def execute(self, ops: HostTierOps) -> None:
        t0 = time.perf_counter()
        for block_hash, block_id in ops.saves:
            self.blocks[block_hash] = [
                tensor.select(dim, block_id).to("cpu", copy=True) for tensor, dim in self.layers
            ]
        for block_hash, block_id in ops.loads:
            saved = self.blocks.get(block_hash)
            assert saved is not None, "scheduler ordered a load the host tier does not hold"
            for (tensor, dim), part in zip(self.layers, saved, strict=True):
                tensor.select(dim, block_id).copy_(part)
        self.stats.copy_s += time.perf_counter() - t0
        self.stats.saved_blocks += len(ops.saves)
        self.stats.loaded_blocks += len(ops.loads)
        for block_hash in ops.drops:
            self.blocks.pop(block_hash, None)
