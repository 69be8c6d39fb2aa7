"""``BlockReporter``: tells pbkv what a vLLM engine caches and which request touched which blocks.

Scheduler side. Every event goes to ``send`` (an ``EngineLink.send``: never blocks, may drop);
nothing here waits, and nothing here changes vLLM's state. Contract:

* **GPU tier.** ``report_block_changes`` reports, since its last call, every block a live
  request has filled (``BlockStored``, in chain order, each run with its parent) and every
  reported block the pool no longer caches (``BlockRemoved``; a block whose hash another block
  still caches is not removed). A block is reported stored once, whichever request filled it.
* **Host tier.** ``cpu_stored`` / ``cpu_removed`` report what the plan applier admits to and
  drops from the host tier: one ``BlockStored`` per block, with its parent (host-tier blocks
  need not form a chain among themselves). ``prefetched`` reports a block the applier copied
  back into a GPU block (a ``BlockStored``, and from then on a reported GPU block).
* **Requests.** ``request_started`` sends ``RequestStarted`` (hashes, GPU and host-tier hit
  blocks, tags) once per request; ``request_finished`` reports the request's last blocks, then
  ``RequestFinished``.
* **Resync.** ``resync`` re-announces the whole cache after the link lost it (a restarted
  service): ``AllBlocksCleared``, every reported GPU block (parents before children), then the
  host tier. ``forget_gpu`` drops what was reported (a fresh link is told the cache anew).

What it knows and the plan applier reads: the GPU blocks reported so far (``gpu_hashes``,
``gpu_hashes_newest_first``) and the chain parent of every block reported on either tier
(``parent``, ``depth``).

Cost per step: proportional to the blocks that changed, not to the cache. Each live request's
scan resumes where its last report stopped (blocks fill in order), and an eviction shows as a
changed key on a reported block, looked for only after a step that could have evicted
(``end_step``) or when the pool's hash map was replaced (a prefix-cache reset).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EngineEvent,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.engine_adapter.vllm.plan_order import cached_block, eviction_possible
from pbkv.engine_adapter.vllm.stats import ConnectorStats
from pbkv.engine_adapter.vllm.tags import tags_of


class BlockReporter:
    """Reports one engine's blocks and requests to ``send`` (see the module docstring)."""

    def __init__(
        self,
        engine_id: str,
        block_size: int,
        step_blocks: int,
        send: Callable[[EngineEvent], None],
        stats: ConnectorStats,
    ) -> None:
        self.engine_id = engine_id
        self.block_size = block_size
        self.step_blocks = step_blocks  # the most blocks one engine step can allocate
        self.send = send
        self.stats = stats
        self.pool: Any = None  # vLLM's BlockPool, once bound
        self._live: dict[str, Any] = {}  # request id -> Request
        self._started: set[str] = set()
        self._gpu_hit: dict[str, int] = {}  # request id -> GPU prefix-cache hit blocks
        self._reported: dict[bytes, bytes | None] = {}  # GPU hash reported stored -> parent
        # GPU hash reported stored -> (block, its block_hash key then): removal is a changed key
        self._reported_at: dict[bytes, tuple[Any, Any]] = {}
        self._scan: dict[str, int] = {}  # live request -> first block index not yet reported
        self._on_host: set[bytes] = set()  # hashes reported stored on the host tier
        self._parents: dict[bytes, bytes | None] = {}  # parent of every reported GPU/host block
        # Could the coming step evict a cached block? (If not, the next report skips looking
        # for evictions.) The pool's hash map object changes when vLLM resets the cache.
        self._evictions_possible = True
        self._pool_map: Any = None

    # ------------------------------------------------------------------ what it knows
    @property
    def live(self) -> Mapping[str, Any]:
        """Requests started and not finished, by request id."""
        return self._live

    def gpu_hashes(self) -> set[bytes]:
        return set(self._reported)

    def stable_blocks(self) -> dict[bytes, tuple[Any, Any]]:
        """Each reported GPU hash -> (block, its ``block_hash`` key when reported). Taken
        before a step's report, these blocks were computed in an earlier step; a block whose
        key has changed since was evicted (and maybe reused: vLLM caches a hash when it
        schedules the block, before the forward computes its KV)."""
        return dict(self._reported_at)

    def gpu_hashes_newest_first(self) -> Iterator[bytes]:
        return reversed(self._reported)

    def knows(self, block_hash: bytes) -> bool:
        """Is the block reported on a tier (so its parent is known)?"""
        return block_hash in self._parents

    def parent(self, block_hash: bytes) -> bytes | None:
        return self._parents.get(block_hash)

    def depth(self, block_hash: bytes) -> int:
        """Blocks before this one in its chain (as far as the parents are known)."""
        depth, h = 0, self._parents.get(block_hash)
        while h is not None and depth < 100_000:
            depth += 1
            h = self._parents.get(h)
        return depth

    # ------------------------------------------------------------------ requests
    def gpu_hit(self, request_id: str, num_blocks: int) -> None:
        """The request's GPU prefix-cache hit, for its ``RequestStarted``."""
        self._gpu_hit[request_id] = num_blocks

    def request_started(self, request: Any, num_cpu_hit_blocks: int) -> None:
        """Report the request once, at its first allocation (later calls do nothing)."""
        req_id = request.request_id
        if req_id in self._started:
            return
        self._started.add(req_id)
        self._live[req_id] = request
        tags = tags_of(request)
        if tags.workflow_id is None:
            self.stats.requests_anonymous += 1
        else:
            self.stats.requests_tagged += 1
        self.send(
            RequestStarted(
                engine_id=self.engine_id,
                request_id=req_id,
                block_hashes=tuple(bytes(h) for h in request.block_hashes),
                num_prompt_tokens=request.num_prompt_tokens,
                num_gpu_hit_blocks=self._gpu_hit.pop(req_id, 0),
                num_cpu_hit_blocks=num_cpu_hit_blocks,
                workflow_id=tags.workflow_id,
                agent=tags.agent,
                tenant=tags.tenant,
            )
        )

    def request_finished(self, request: Any) -> None:
        req_id = request.request_id
        self._gpu_hit.pop(req_id, None)
        if self._live.pop(req_id, None) is not None:
            self._live[req_id] = request  # last: its final blocks follow the others'
            try:
                self.report_block_changes()
            finally:
                self._live.pop(req_id, None)
        self._scan.pop(req_id, None)
        self._started.discard(req_id)
        self.send(
            RequestFinished(self.engine_id, req_id, num_output_tokens=request.num_output_tokens)
        )

    # ------------------------------------------------------------------ GPU tier
    def report_block_changes(self) -> None:
        """Report the GPU blocks evicted and the blocks live requests filled since the last
        call (the module docstring says what it costs)."""
        removed = []
        pool_map = self.pool.cached_block_hash_to_block
        if self._evictions_possible or pool_map is not self._pool_map:
            for h, (block, key) in self._reported_at.items():
                if block.block_hash is not key:
                    removed.append(h)
        self._pool_map = pool_map
        for h in removed:
            other = cached_block(self.pool, h)  # a duplicate block may still hold the hash
            if other is not None:
                self._reported_at[h] = (other, other.block_hash)
                continue
            del self._reported[h], self._reported_at[h]
            if h not in self._on_host:
                self._parents.pop(h, None)
        removed = [h for h in removed if h not in self._reported]
        if removed:
            self.send(BlockRemoved(self.engine_id, tuple(removed), Tier.GPU))
        for req_id, request in self._live.items():
            self._report_filled(req_id, request.block_hashes)

    def _report_filled(self, req_id: str, hashes: Any) -> None:
        """Report the request's blocks from where its last report stopped to its first block
        the pool does not cache yet, one ``BlockStored`` per run of unreported blocks."""
        i = self._scan.get(req_id, 0)
        run: list[bytes] = []
        parent: bytes | None = bytes(hashes[i - 1]) if i else None
        while i < len(hashes):
            h = bytes(hashes[i])
            if h in self._reported:
                if run:
                    self._send_gpu_stored(run, parent)
                    run = []
                parent = h
                i += 1
                continue
            block = cached_block(self.pool, h)
            if block is None:  # blocks are filled in order: the rest are not yet
                break
            self._reported[h] = self._parents[h] = run[-1] if run else parent
            self._reported_at[h] = (block, block.block_hash)
            run.append(h)
            i += 1
        self._scan[req_id] = i
        if run:
            self._send_gpu_stored(run, parent)

    def prefetched(self, block_hash: bytes, parent: bytes | None, block: Any) -> None:
        """``block`` now caches ``block_hash`` (copied back from the host tier)."""
        self._reported[block_hash] = parent
        self._reported_at[block_hash] = (block, block.block_hash)
        self._send_gpu_stored([block_hash], parent)

    def _send_gpu_stored(self, run: list[bytes], parent: bytes | None) -> None:
        self.send(BlockStored(self.engine_id, tuple(run), parent, self.block_size, Tier.GPU))

    def end_step(self) -> None:
        """Note whether the coming step could evict a cached block. Allocation in one step
        takes at most ``step_blocks`` blocks from the head of the free queue; while twice that
        many never-used blocks head it, no cached block can go."""
        self._evictions_possible = eviction_possible(self.pool, 2 * self.step_blocks)

    # ------------------------------------------------------------------ host tier
    def cpu_stored(self, hashes: list[bytes]) -> None:
        # One event per block: host-tier blocks need not form a chain among themselves.
        for h in hashes:
            self._on_host.add(h)
            self.send(
                BlockStored(self.engine_id, (h,), self._parents.get(h), self.block_size, Tier.CPU)
            )

    def cpu_removed(self, hashes: list[bytes]) -> None:
        if not hashes:
            return
        for h in hashes:
            self._on_host.discard(h)
            if h not in self._reported:
                self._parents.pop(h, None)
        self.send(BlockRemoved(self.engine_id, tuple(hashes), Tier.CPU))

    # ------------------------------------------------------------------ link changes
    def resync(self, host_hashes: list[bytes]) -> None:
        """Re-announce the whole cache after a (re)connect: the service may have restarted.
        ``host_hashes``: the host tier's blocks, in the tier's order."""
        self.send(AllBlocksCleared(self.engine_id, None))
        for h, parent in self._reported.items():  # insertion order: parents before children
            self._send_gpu_stored([h], parent)
        self.cpu_stored(host_hashes)

    def forget_gpu(self) -> None:
        """Forget the GPU blocks reported (a fresh link is told them anew); the host tier's
        blocks and every request's state stay."""
        self._reported.clear()
        self._reported_at.clear()
        self._scan.clear()
        self._parents = {h: p for h, p in self._parents.items() if h in self._on_host}
        self._evictions_possible = True
