"""What one engine caches: a tree of KV blocks keyed by chained block hash.

A block's hash covers its parent's hash and its own token ids (vLLM 0.32), so the blocks of a
prompt form a path from a root; prompts that share a prefix share the path::

    root --- b0 --- b1 --- b2          request A: (b0, b1, b2)
               \\--- c1 --- c2          request B: (b0, c1, c2)
    depth:   0      1      2           token offset of a block = depth * tokens_per_block

Each block records its tier (copies on the GPU and on the CPU; vLLM can hold two GPU copies of
one hash, so these are counts), its in-use count (running requests whose prompt holds it), its
last access and the (workflow, agent) pairs that used it. Blocks are learned from requests
(``request_started`` inserts the prompt's chain with no tier) and from ``store`` events; a block
with no tier, no user in flight and no children is dropped. The directory is mechanism only: it
never decides what to evict.

Every mutating method validates its whole input first and raises a ``CacheManagerError`` naming
the argument at fault, so a rejected event leaves the directory exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum

from pbkv.cache_manager.checks import check_hashes, short_hash
from pbkv.cache_manager.errors import (
    CacheManagerError,
    HashChainConflict,
    UnknownBlock,
    UnknownRequest,
)
from pbkv.cache_manager.events import Tier

UserKey = tuple[str, str]  # (workflow_id, agent)


class Residency(StrEnum):
    GPU = "gpu"
    CPU = "cpu"
    BOTH = "both"
    NONE = "none"


class Block:
    """One node of the tree (mutable; owned by its ``BlockDirectory``)."""

    __slots__ = (
        "block_hash",
        "parent",
        "depth",
        "gpu_copies",
        "cpu_copies",
        "ref_cnt",
        "last_access_s",
        "users",
        "num_children",
        "prefetched",
        "tail_depth",
    )

    def __init__(self, block_hash: bytes, parent: bytes | None, depth: int) -> None:
        self.block_hash = block_hash
        self.parent = parent
        self.depth = depth
        self.gpu_copies = 0
        self.cpu_copies = 0
        self.ref_cnt = 0
        self.last_access_s: float | None = None
        self.users: dict[UserKey, None] = {}  # insertion-ordered, bounded
        self.num_children = 0
        self.prefetched = False  # loaded to the GPU by a plan's prefetch, not yet hit
        # Deepest descendant ever inserted below it (an upper bound after pruning): how far
        # the prompts through this block reach.
        self.tail_depth = depth

    @property
    def on_gpu(self) -> bool:
        return self.gpu_copies > 0

    @property
    def on_cpu(self) -> bool:
        return self.cpu_copies > 0

    @property
    def residency(self) -> Residency:
        if self.gpu_copies and self.cpu_copies:
            return Residency.BOTH
        if self.gpu_copies:
            return Residency.GPU
        return Residency.CPU if self.cpu_copies else Residency.NONE

    @property
    def evictable(self) -> bool:
        """On the GPU and used by no running request."""
        return self.gpu_copies > 0 and self.ref_cnt == 0


MAX_USERS_PER_BLOCK = 32  # the default of DirectoryConfig and BlockDirectory


class BlockDirectory:
    """The block tree of one engine (see the module docstring)."""

    def __init__(
        self,
        engine_id: str,
        *,
        gpu_blocks: int,
        cpu_blocks: int,
        tokens_per_block: int,
        bytes_per_token: int = 0,
        max_users_per_block: int = MAX_USERS_PER_BLOCK,
    ) -> None:
        for name, value, low in (
            ("gpu_blocks", gpu_blocks, 1),
            ("cpu_blocks", cpu_blocks, 0),
            ("tokens_per_block", tokens_per_block, 1),
            ("bytes_per_token", bytes_per_token, 0),
            ("max_users_per_block", max_users_per_block, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CacheManagerError(
                    f"engine {engine_id!r}: {name} must be an int >= {low}, got {value!r}"
                )
        self.engine_id = engine_id
        self.gpu_blocks = gpu_blocks
        self.cpu_blocks = cpu_blocks
        self.tokens_per_block = tokens_per_block
        self.bytes_per_block = bytes_per_token * tokens_per_block
        self.max_users_per_block = max_users_per_block
        self._blocks: dict[bytes, Block] = {}
        self._requests: dict[str, tuple[bytes, ...]] = {}
        self.gpu_used = 0  # GPU copies (slots holding cached blocks)
        self.cpu_used = 0
        self.gpu_removed = 0  # GPU copies removed so far (evictions; the planner watches it)
        # Blocks whose tier, in-use state or access changed since the planner last looked.
        self.changed: set[bytes] = set()

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def __iter__(self) -> Iterator[Block]:
        return iter(self._blocks.values())

    def get(self, block_hash: bytes) -> Block | None:
        return self._blocks.get(block_hash)

    def token_offset(self, block: Block) -> int:
        return block.depth * self.tokens_per_block

    def request_blocks(self, request_id: str) -> tuple[bytes, ...] | None:
        return self._requests.get(request_id)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # ------------------------------------------------------------------ events
    def store(
        self,
        block_hashes: Sequence[bytes],
        parent_hash: bytes | None,
        tier: Tier,
        *,
        now_s: float | None = None,
    ) -> list[Block]:
        """Blocks became cached in ``tier`` (chain order, the first one's parent is
        ``parent_hash``). A block already in the tier gains a copy (vLLM can cache a hash
        twice). Raises for a missing parent, a conflicting chain or a full tier."""
        tier = Tier(tier)
        check_hashes("block_hashes", block_hashes)
        if parent_hash is not None and parent_hash not in self._blocks:
            raise UnknownBlock(
                f"engine {self.engine_id!r}: parent_hash "
                f"{parent_hash.hex()[:16]} is not in the directory"
            )
        self._check_chain(block_hashes, parent_hash, "block_hashes")
        used, cap = (
            (self.gpu_used, self.gpu_blocks)
            if tier is Tier.GPU
            else (self.cpu_used, self.cpu_blocks)
        )
        if used + len(block_hashes) > cap:
            raise CacheManagerError(
                f"engine {self.engine_id!r}: storing {len(block_hashes)} blocks in {tier} "
                f"exceeds its capacity ({used} of {cap} slots used)"
            )
        stored = self._insert_chain(block_hashes, parent_hash)
        for b in stored:
            if tier is Tier.GPU:
                b.gpu_copies += 1
                self.gpu_used += 1
            else:
                b.cpu_copies += 1
                self.cpu_used += 1
            if now_s is not None and tier is Tier.GPU:
                b.last_access_s = now_s if b.last_access_s is None else max(b.last_access_s, now_s)
            self.changed.add(b.block_hash)
        return stored

    def remove(self, block_hashes: Sequence[bytes], tier: Tier) -> list[Block]:
        """Blocks left ``tier``. Raises (changing nothing) for an unknown block or one that
        has no copy left in the tier (e.g. removed twice)."""
        tier = Tier(tier)
        check_hashes("block_hashes", block_hashes)
        need: dict[bytes, int] = {}
        for h in block_hashes:
            need[h] = need.get(h, 0) + 1
        for h, n in need.items():
            b = self._blocks.get(h)
            have = 0 if b is None else (b.gpu_copies if tier is Tier.GPU else b.cpu_copies)
            if have < n:
                raise UnknownBlock(
                    f"engine {self.engine_id!r}: block {h.hex()[:16]} removed "
                    f"from {tier} but it holds {have} copies there"
                )
        out = []
        for h in block_hashes:
            b = self._blocks[h]
            if tier is Tier.GPU:
                b.gpu_copies -= 1
                self.gpu_used -= 1
                self.gpu_removed += 1
            else:
                b.cpu_copies -= 1
                self.cpu_used -= 1
            self.changed.add(h)
            out.append(b)
        for b in out:
            self._prune(b)
        return out

    def clear(self, tier: Tier | None = None) -> None:
        """Every block leaves ``tier`` (``None``: every tier)."""
        tiers = (Tier.GPU, Tier.CPU) if tier is None else (Tier(tier),)
        for b in self._blocks.values():
            if Tier.GPU in tiers and b.gpu_copies:
                b.gpu_copies = 0
                self.changed.add(b.block_hash)
            if Tier.CPU in tiers and b.cpu_copies:
                b.cpu_copies = 0
                self.changed.add(b.block_hash)
            if Tier.GPU in tiers:
                b.prefetched = False
        if Tier.GPU in tiers:
            self.gpu_used = 0
        if Tier.CPU in tiers:
            self.cpu_used = 0
        # Leaves first: a parent becomes prunable once its children are gone.
        for b in sorted(self._blocks.values(), key=lambda x: -x.depth):
            self._prune(b)

    def request_started(
        self,
        request_id: str,
        block_hashes: Sequence[bytes],
        user: UserKey | None,
        now_s: float | None,
    ) -> list[Block]:
        """A request holds the prompt chain ``block_hashes`` (rooted) until it finishes:
        unknown blocks are inserted with no tier; each block's in-use count grows by one."""
        if request_id in self._requests:
            raise CacheManagerError(
                f"engine {self.engine_id!r}: request_id {request_id!r} started twice"
            )
        check_hashes("block_hashes", block_hashes)
        self._check_chain(block_hashes, None, "block_hashes")
        blocks = self._insert_chain(block_hashes, None)
        for b in blocks:
            b.ref_cnt += 1
            if now_s is not None:
                b.last_access_s = now_s if b.last_access_s is None else max(b.last_access_s, now_s)
            if user is not None:
                b.users.pop(user, None)
                b.users[user] = None
                while len(b.users) > self.max_users_per_block:
                    del b.users[next(iter(b.users))]
            self.changed.add(b.block_hash)
        self._requests[request_id] = tuple(block_hashes)
        return blocks

    def request_finished(self, request_id: str, now_s: float | None = None) -> list[Block]:
        hashes = self._requests.pop(request_id, None)
        if hashes is None:
            raise UnknownRequest(
                f"engine {self.engine_id!r}: request_id {request_id!r} is not running"
            )
        blocks = [self._blocks[h] for h in hashes]
        for b in blocks:
            b.ref_cnt -= 1
            if now_s is not None:
                b.last_access_s = now_s if b.last_access_s is None else max(b.last_access_s, now_s)
            self.changed.add(b.block_hash)
        for b in reversed(blocks):
            self._prune(b)
        return blocks

    # ------------------------------------------------------------------ integrity
    def check_integrity(self) -> None:
        """Raise ``AssertionError`` if an invariant is broken (run by tests after each step)."""
        children: dict[bytes, int] = {}
        gpu = cpu = 0
        for h, b in self._blocks.items():
            assert b.block_hash == h, "block keyed by a different hash"
            assert b.gpu_copies >= 0 and b.cpu_copies >= 0 and b.ref_cnt >= 0, h.hex()
            gpu += b.gpu_copies
            cpu += b.cpu_copies
            if b.parent is None:
                assert b.depth == 0, (h.hex(), b.depth)
            else:
                parent = self._blocks.get(b.parent)
                assert parent is not None, f"parent of {h.hex()[:16]} missing"
                assert b.depth == parent.depth + 1, (h.hex(), b.depth, parent.depth)
                children[b.parent] = children.get(b.parent, 0) + 1
            assert len(b.users) <= self.max_users_per_block
            assert not b.prefetched or b.on_gpu, "prefetched flag on a block not on the GPU"
            assert b.tail_depth >= b.depth
            if b.parent is not None:
                assert self._blocks[b.parent].tail_depth >= b.tail_depth, h.hex()
        refs: dict[bytes, int] = {}
        for hashes in self._requests.values():
            for h in hashes:
                refs[h] = refs.get(h, 0) + 1
        for h, b in self._blocks.items():
            assert b.num_children == children.get(h, 0), (h.hex(), b.num_children)
            assert b.ref_cnt == refs.get(h, 0), (h.hex(), b.ref_cnt, refs.get(h, 0))
            assert b.gpu_copies or b.cpu_copies or b.ref_cnt or b.num_children, (
                f"dead block {h.hex()[:16]} not pruned"
            )
        assert gpu == self.gpu_used <= self.gpu_blocks, (gpu, self.gpu_used, self.gpu_blocks)
        assert cpu == self.cpu_used <= self.cpu_blocks, (cpu, self.cpu_used, self.cpu_blocks)

    # ------------------------------------------------------------------ internals
    def _check_chain(
        self, block_hashes: Sequence[bytes], parent_hash: bytes | None, arg: str
    ) -> None:
        parent = parent_hash
        seen: set[bytes] = set()
        for i, h in enumerate(block_hashes):
            if h in seen or h == parent_hash:
                raise HashChainConflict(
                    f"engine {self.engine_id!r}: {arg}[{i}] {h.hex()[:16]} repeats in its own chain"
                )
            seen.add(h)
            b = self._blocks.get(h)
            if b is not None and b.parent != parent:
                raise HashChainConflict(
                    f"engine {self.engine_id!r}: {arg}[{i}] {h.hex()[:16]} has parent "
                    f"{short_hash(b.parent)} in the directory, the event says {short_hash(parent)}"
                )
            parent = h

    def _insert_chain(
        self, block_hashes: Sequence[bytes], parent_hash: bytes | None
    ) -> list[Block]:
        parent = parent_hash
        depth = -1 if parent_hash is None else self._blocks[parent_hash].depth
        out = []
        for h in block_hashes:
            depth += 1
            b = self._blocks.get(h)
            if b is None:
                b = self._blocks[h] = Block(h, parent, depth)
                if parent is not None:
                    self._blocks[parent].num_children += 1
            out.append(b)
            parent = h
        # Propagate the chain's reach up to the ancestors that do not know it yet.
        reach = out[-1].tail_depth if out else 0
        node = self._blocks.get(out[-1].parent) if out and out[-1].parent is not None else None
        while node is not None and node.tail_depth < reach:
            node.tail_depth = reach
            node = self._blocks.get(node.parent) if node.parent is not None else None
        return out

    def _prune(self, b: Block) -> None:
        """Drop ``b`` and then its ancestors while they hold nothing and nobody needs them."""
        while (
            b.gpu_copies == 0
            and b.cpu_copies == 0
            and b.ref_cnt == 0
            and b.num_children == 0
            and self._blocks.get(b.block_hash) is b
        ):
            del self._blocks[b.block_hash]
            self.changed.add(b.block_hash)
            if b.parent is None:
                return
            parent = self._blocks[b.parent]
            parent.num_children -= 1
            b = parent
