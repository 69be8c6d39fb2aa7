"""What engines tell the cache manager, and the plans it answers with.

These frozen types are the boundary between the engine-agnostic core and any engine (the
simulated one in ``engine_adapter/sim``, vLLM in ``engine_adapter/vllm``); the gRPC servicer
converts protobuf messages to and from them. Block hashes are opaque ``bytes`` chained the way
vLLM chains them (a block's hash covers its parent's hash and its own token ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Tier(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks became cached in ``tier`` (hashes in chain order: each one's parent is the
    previous one, the first one's parent is ``parent_hash``; ``None`` means the root)."""

    engine_id: str
    block_hashes: tuple[bytes, ...]
    parent_hash: bytes | None
    tokens_per_block: int
    tier: Tier = Tier.GPU


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks left ``tier`` (evicted, or moved: a GPU->CPU offload is BlockStored(CPU) then
    BlockRemoved(GPU))."""

    engine_id: str
    block_hashes: tuple[bytes, ...]
    tier: Tier = Tier.GPU


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    engine_id: str
    tier: Tier | None = None  # None: every tier


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request was scheduled. ``block_hashes`` are the full blocks of its prompt, in order;
    the first ``num_gpu_hit_blocks`` were found on the GPU, the next ``num_cpu_hit_blocks`` were
    loaded from the CPU tier, the rest are computed. Tags are ``None`` for anonymous requests."""

    engine_id: str
    request_id: str
    block_hashes: tuple[bytes, ...]
    num_prompt_tokens: int
    num_gpu_hit_blocks: int = 0
    num_cpu_hit_blocks: int = 0
    workflow_id: str | None = None
    agent: str | None = None
    tenant: str | None = None
    now_s: float | None = None


@dataclass(frozen=True, slots=True)
class RequestFinished:
    engine_id: str
    request_id: str
    num_output_tokens: int = 0
    now_s: float | None = None


EngineEvent = BlockStored | BlockRemoved | AllBlocksCleared | RequestStarted | RequestFinished


@dataclass(frozen=True, slots=True)
class CachePlan:
    """One engine's cache instructions; a newer ``seq`` replaces an older plan entirely.

    ``evict_first`` lists evictable GPU blocks to evict before any other, first to go first;
    blocks the plan does not name are evicted by LRU after them. ``offload`` are GPU blocks to
    copy to the CPU tier before they are evicted; ``prefetch`` are CPU blocks to load to the
    GPU for the coming step, in priority order. ``host_drop_first`` lists blocks with a CPU copy
    whose copy the CPU tier should drop before any other, first to go first (the rest by the
    tier's LRU). ``cache_manager.plan_order`` is how an engine reads these lists. An engine
    that has no plan, or a stale one, falls back to plain LRU.
    """

    engine_id: str
    seq: int
    evict_first: tuple[bytes, ...] = ()
    offload: tuple[bytes, ...] = ()
    prefetch: tuple[bytes, ...] = ()
    created_s: float = 0.0
    fallback_lru: bool = False
    host_drop_first: tuple[bytes, ...] = ()
