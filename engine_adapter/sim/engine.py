"""A discrete-event simulated serving engine with a GPU prefix cache and a CPU tier.

The engine owns the *mechanism* (block pools, ref counts, the host link, continuous batching);
the cache manager owns the *policy* and speaks to it only through two callables:

    sink(event)            engine -> manager: BlockStored / BlockRemoved / RequestStarted /
                           RequestFinished (``pbkv.cache_manager.events``)
    plans(engine_id)       manager -> engine: the latest ``CachePlan`` or ``None``; pulled at
                           the start of every iteration, never waited for

In process that is ``manager.on_engine_event`` / ``manager.plan`` (``link.attach_manager``);
remotely it is the gRPC ``EngineLinkClient`` (``link.EngineLinkPlans``). Time is an explicit
simulated clock (``now_s``); nothing reads the wall clock.

GPU pool (``gpu_blocks`` slots)::

    | cached, in use (ref>0) | cached, evictable (ref=0) | held by requests, uncached | free |
                             '-- eviction order: plan.evict_first, then LRU of the blocks
                                 the plan does not name (``cache_manager.plan_order``);
                                 plain LRU with no plan, a stale plan or ``fallback_lru``

A request's prompt is looked up block by block: the longest run of GPU-cached blocks (GPU
hits), then the run of blocks the CPU tier holds (CPU hits, loaded over the host link), then
the rest is computed. Like vLLM, the last prompt token is always computed. Slots for the whole
request (prompt and output) are reserved at admission (FCFS; a request that does not fit waits,
and so does everything behind it). Newly computed full prompt blocks become cached as each
prefill chunk completes; output tokens occupy uncached slots. Blocks in use are never
evicted. On eviction a block the plan lists in ``offload`` is written back to the CPU tier
first (the slot is reusable once the copy is done). In the background, within the
``transfer_window_s`` look-ahead of each link, the engine copies ``offload`` blocks to the CPU
ahead of eviction and loads ``prefetch`` blocks to the GPU, taking slots only from free space,
``evict_first`` or unnamed blocks (``plan_order.prefetch_victims``).

Transfers overlap compute: a request whose blocks are still in flight simply is not batched
until they land; other requests keep running. Time the engine spends with nothing to run but
transfers in flight is ``stall_s``.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from pbkv.cache_manager.events import (
    BlockRemoved,
    BlockStored,
    CachePlan,
    EngineEvent,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.plan_order import (
    eviction_order,
    named,
    prefetch_spared,
    prefetch_victims,
    write_through_candidates,
)
from pbkv.engine_adapter.block_hash import block_hashes
from pbkv.engine_adapter.sim.cost_model import CostModel

EventSink = Callable[[EngineEvent], None]
PlanSource = Callable[[str], CachePlan | None]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    gpu_blocks: int
    cpu_blocks: int = 0
    tokens_per_block: int = 16
    engine_id: str = "sim0"
    max_batch_seqs: int = 256          # vLLM max_num_seqs
    max_batch_tokens: int = 8192       # chunked-prefill token budget per iteration
    plan_max_age_s: float | None = None  # a plan older than this (engine clock) is ignored
    transfer_window_s: float = 0.05    # how far ahead background transfers may book a link
    # Prefetch a block only once its parent is on the GPU, as pbkv's vLLM adapter does (a
    # block whose parent is missing cannot be hit: prefix matching stops at the gap).
    prefetch_needs_parent: bool = False
    # The vLLM adapter's host tier instead of the default one: each iteration, write through
    # at most this many computed blocks -- the plan's ``offload``, then blocks the plan has
    # not ranked (newest first, not ``evict_first``) while the CPU tier has room -- and never
    # write back at eviction (vLLM evicts lazily, where no hook runs). 0: write-back on
    # eviction plus background offload of ``offload`` within ``transfer_window_s`` (an
    # idealised GPU tier).
    write_through_per_iteration: int = 0
    # A bound, not a machine: cached blocks nobody uses take no slot, so nothing is ever
    # evicted and every reuse hits; only blocks in use count against ``gpu_blocks``.
    ideal_cache: bool = False

    def __post_init__(self) -> None:
        for name in ("gpu_blocks", "tokens_per_block", "max_batch_seqs", "max_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cpu_blocks, int) or self.cpu_blocks < 0:
            raise ValueError(f"EngineConfig.cpu_blocks must be an integer >= 0, "
                             f"got {self.cpu_blocks!r}")
        if self.plan_max_age_s is not None and not self.plan_max_age_s > 0:
            raise ValueError(f"EngineConfig.plan_max_age_s must be positive or None, "
                             f"got {self.plan_max_age_s}")
        if not self.transfer_window_s >= 0:
            raise ValueError(f"EngineConfig.transfer_window_s must be >= 0, "
                             f"got {self.transfer_window_s}")


@dataclass(frozen=True, slots=True)
class SimRequest:
    request_id: str
    token_ids: tuple[int, ...]
    output_tokens: int
    workflow_id: str | None = None
    agent: str | None = None
    tenant: str | None = None
    # Precomputed ``block_hashes(token_ids, tokens_per_block)`` (a replay reuses them).
    block_hashes: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class RequestResult:
    request_id: str
    workflow_id: str | None
    agent: str | None
    submit_s: float
    admit_s: float
    first_token_s: float
    finish_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    gpu_hit_blocks: int
    cpu_hit_blocks: int
    computed_prompt_tokens: int
    load_wait_s: float  # admission -> all its loads / write-backs done


@dataclass(frozen=True, slots=True)
class EngineStats:
    now_s: float
    iterations: int
    busy_s: float
    stall_s: float
    requests_finished: int
    prompt_tokens: int
    computed_prompt_tokens: int
    output_tokens: int
    lookup_blocks: int
    gpu_hit_blocks: int
    cpu_hit_blocks: int
    h2d_bytes: int
    d2h_bytes: int
    prefetched_blocks: int
    prefetch_used_blocks: int
    offloaded_blocks: int
    gpu_evictions: int
    cpu_evictions: int

    @property
    def gpu_hit_rate(self) -> float:
        return self.gpu_hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0

    @property
    def cpu_hit_rate(self) -> float:
        return self.cpu_hit_blocks / self.lookup_blocks if self.lookup_blocks else 0.0


class _Phase(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class _Req:
    req: SimRequest
    hashes: list[bytes]
    submit_s: float
    phase: _Phase = _Phase.WAITING
    held: list[bytes] = field(default_factory=list)  # cached blocks it pins, chain order
    own_slots: int = 0          # slots it holds that are not (yet) cached blocks
    prefilled_tokens: int = 0
    cached_upto: int = 0        # prompt blocks below this index are cached or duplicates
    generated: int = 0
    ready_s: float = 0.0        # its loads / write-backs are done
    admit_s: float = 0.0
    first_token_s: float = 0.0
    gpu_hits: int = 0
    cpu_hits: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.req.token_ids)


@dataclass(slots=True)
class _GpuBlock:
    parent: bytes | None
    ref_cnt: int = 0
    ready_s: float = 0.0        # a load in flight lands at this time


class _PlanView:
    """A plan's lists as sets, built once per plan ``seq``."""

    __slots__ = ("plan", "named", "offload", "prefetch", "offload_cursor", "prefetch_cursor")

    def __init__(self, plan: CachePlan) -> None:
        # Background passes resume where the previous pass of the same plan stopped, so a
        # long offload list is scanned once per plan, not once per iteration.
        self.offload_cursor = 0
        self.prefetch_cursor = 0
        self.plan = plan
        self.named = named(plan)
        self.offload = set(plan.offload)
        self.prefetch = prefetch_spared(plan)


class SimEngine:
    """Drive with ``submit`` and ``run``; read ``stats()``. See the module docstring."""

    def __init__(self, config: EngineConfig, cost: CostModel, *,
                 sink: EventSink | None = None, plans: PlanSource | None = None,
                 start_s: float = 0.0) -> None:
        self.config = config
        self.cost = cost
        self._sink = sink
        self._plans = plans
        self.now_s = start_s
        self._block_bytes = cost.block_bytes(config.tokens_per_block)
        self._gpu: dict[bytes, _GpuBlock] = {}
        self._free_lru: OrderedDict[bytes, None] = OrderedDict()  # ref 0, evict from front
        self._uncached_slots = 0
        self._cpu: OrderedDict[bytes, bytes | None] = OrderedDict()  # hash -> parent, LRU
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._h2d_free_s = start_s
        self._serial_s = 0.0  # transfer time not hidden behind compute, added to the next step
        self._d2h_free_s = start_s
        self._view: _PlanView | None = None
        self._prefetched: set[bytes] = set()
        self._cpu_protected: set[bytes] = set()
        self._counts: dict[str, float] = dict.fromkeys(
            ("iterations", "busy_s", "stall_s", "requests_finished", "prompt_tokens",
             "computed_prompt_tokens", "output_tokens", "lookup_blocks", "gpu_hit_blocks",
             "cpu_hit_blocks", "h2d_bytes", "d2h_bytes", "prefetched_blocks",
             "prefetch_used_blocks", "offloaded_blocks", "gpu_evictions", "cpu_evictions"), 0)

    # ------------------------------------------------------------------ public face
    @property
    def engine_id(self) -> str:
        return self.config.engine_id

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def num_active(self) -> int:
        return len(self._waiting) + len(self._running)

    def submit(self, request: SimRequest) -> None:
        """Queue a request at ``now_s`` (it is admitted by the next iteration that fits it)."""
        need = self._slots_needed(len(request.token_ids), request.output_tokens)
        if need > self.config.gpu_blocks:
            raise ValueError(f"request {request.request_id!r} needs {need} GPU blocks "
                             f"({len(request.token_ids)} prompt + {request.output_tokens} "
                             f"output tokens); the engine has {self.config.gpu_blocks}")
        if not request.token_ids:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        if request.output_tokens < 0:
            raise ValueError(f"request {request.request_id!r}: output_tokens < 0")
        if request.block_hashes is None:
            hashes = block_hashes(request.token_ids, self.config.tokens_per_block)
        elif len(request.block_hashes) != len(request.token_ids) // self.config.tokens_per_block:
            raise ValueError(f"request {request.request_id!r}: {len(request.block_hashes)} "
                             f"block hashes for {len(request.token_ids)} tokens")
        else:
            hashes = list(request.block_hashes)
        self._waiting.append(_Req(request, hashes, self.now_s))

    def run(self, until_s: float | None = None) -> list[RequestResult]:
        """Advance until at least one request finishes, ``until_s`` is reached, or there is
        nothing left to do (then the clock jumps to ``until_s`` if given)."""
        while True:
            if until_s is not None and self.now_s >= until_s:
                return []
            done = self._iterate(until_s)
            if done is None:  # nothing to do
                if until_s is not None:
                    self.now_s = max(self.now_s, until_s)
                return []
            if done:
                return done

    def stats(self) -> EngineStats:
        c = self._counts
        return EngineStats(now_s=self.now_s, **{k: (v if k.endswith("_s") else int(v))
                                                 for k, v in c.items()})

    def gpu_cached(self) -> list[bytes]:
        return list(self._gpu)

    def cpu_cached(self) -> list[bytes]:
        return list(self._cpu)

    def evictable(self) -> list[bytes]:
        """GPU blocks with no user, in plain-LRU eviction order (first = evicted first)."""
        return list(self._free_lru)

    def check_integrity(self) -> None:
        refs: dict[bytes, int] = {}
        own = 0
        for r in self._running:
            own += r.own_slots
            for h in r.held:
                refs[h] = refs.get(h, 0) + 1
        assert own == self._uncached_slots, (own, self._uncached_slots)
        assert self._free_slots() >= 0
        assert len(self._cpu) <= self.config.cpu_blocks
        for h, b in self._gpu.items():
            assert b.ref_cnt == refs.get(h, 0), (h.hex()[:8], b.ref_cnt, refs.get(h, 0))
            assert (b.ref_cnt == 0) == (h in self._free_lru)
        assert all(h in self._gpu for h in self._free_lru)

    # ------------------------------------------------------------------ one iteration
    def _iterate(self, until_s: float | None) -> list[RequestResult] | None:
        # vLLM V1's order: running requests take the token budget first, then waiting ones
        # are admitted (and looked up in the cache) while budget and memory last, so a
        # request admitted after another one's prefill hits the blocks it computed.
        view = self._pull_plan()
        self._background_transfers(view)
        decoding = [r for r in self._running if r.phase is _Phase.DECODE]
        budget = self.config.max_batch_tokens - len(decoding)
        chunks: list[tuple[_Req, int]] = []
        for r in self._running:
            if r.phase is _Phase.PREFILL and r.ready_s <= self.now_s and budget > 0:
                n = min(r.num_prompt_tokens - r.prefilled_tokens, budget)
                chunks.append((r, n))
                budget -= n
        while (budget > 0 and self._waiting
               and len(self._running) < self.config.max_batch_seqs
               and self._try_admit(self._waiting[0], view)):
            r = self._waiting.popleft()
            self._running.append(r)
            if r.ready_s <= self.now_s:
                n = min(r.num_prompt_tokens - r.prefilled_tokens, budget)
                chunks.append((r, n))
                budget -= n
        if not chunks and not decoding:
            return self._wait_for_transfers(until_s)
        if not chunks:
            return self._decode_run(decoding, until_s)
        dt = self.cost.iteration_s([(n, r.prefilled_tokens) for r, n in chunks],
                                   [r.num_prompt_tokens + r.generated for r in decoding])
        self._advance(dt, 1)
        finished: list[RequestResult] = []
        for r, n in chunks:
            r.prefilled_tokens += n
            if r.prefilled_tokens < r.num_prompt_tokens:
                self._cache_computed(r)
            else:
                self._prefill_done(r)
                if r.generated >= r.req.output_tokens:
                    finished.append(self._finish(r))
        for r in decoding:
            r.generated += 1
            if r.generated >= r.req.output_tokens:
                finished.append(self._finish(r))
        return finished

    def _advance(self, dt: float, iterations: int) -> None:
        dt += self._serial_s  # copies the engine itself executes (transfer_overlap < 1)
        self._serial_s = 0.0
        self.now_s += dt
        self._counts["busy_s"] += dt
        self._counts["iterations"] += iterations

    def _wait_for_transfers(self, until_s: float | None) -> list[RequestResult] | None:
        pending = [r.ready_s for r in self._running if r.phase is _Phase.PREFILL]
        if not pending:
            return None
        t = min(pending)
        if until_s is not None:
            t = min(t, until_s)
        self._counts["stall_s"] += t - self.now_s
        self.now_s = t
        return []

    def _decode_run(self, decoding: list[_Req], until_s: float | None) -> list[RequestResult]:
        """Decode-only iterations change nothing but counters until the first finish, an
        arrival, a landed load or a link that frees up: take them in one go."""
        k_max = min(r.req.output_tokens - r.generated for r in decoding)
        bounds = [r.ready_s for r in self._running if r.phase is _Phase.PREFILL]
        if until_s is not None:
            bounds.append(until_s)
        view = self._view
        if view is not None and view.prefetch_cursor < len(view.plan.prefetch):
            bounds.append(self._h2d_free_s)
        if view is not None and view.offload_cursor < len(view.plan.offload):
            bounds.append(self._d2h_free_s)
        horizon = min((b for b in bounds if b > self.now_s), default=math.inf)
        contexts = [r.num_prompt_tokens + r.generated for r in decoding]
        total = 0.0
        k = 0
        while k < k_max:
            dt = self.cost.iteration_s((), (c + k for c in contexts))
            total += dt
            k += 1
            if self.now_s + total >= horizon:
                break
        self._advance(total, k)
        finished = []
        for r in decoding:
            r.generated += k
            if r.generated >= r.req.output_tokens:
                finished.append(self._finish(r))
        return finished

    # ------------------------------------------------------------------ plans
    def _pull_plan(self) -> _PlanView | None:
        plan = self._plans(self.config.engine_id) if self._plans is not None else None
        max_age = self.config.plan_max_age_s
        stale = plan is not None and max_age is not None and self.now_s - plan.created_s > max_age
        if plan is None or plan.fallback_lru or stale:
            self._view = None
        elif self._view is None or self._view.plan is not plan:
            self._view = _PlanView(plan)
        return self._view

    def _victims(self, n: int, view: _PlanView | None, *, for_prefetch: bool = False
                 ) -> list[bytes]:
        """Up to ``n`` evictable GPU blocks in eviction order (see the module docstring)."""
        if n <= 0:
            return []
        if view is None:
            if for_prefetch:
                return []
            return [h for h, _ in zip(self._free_lru, range(n), strict=False)]
        out: list[bytes] = []
        chosen: set[bytes] = set()
        order = (prefetch_victims(view.plan, self._free_lru, view.named, view.prefetch)
                 if for_prefetch else eviction_order(view.plan, self._free_lru, view.named))
        for h in order:
            if h in self._free_lru and h not in chosen:
                out.append(h)
                chosen.add(h)
                if len(out) >= n:
                    break
        return out

    # ------------------------------------------------------------------ admission
    def _slots_needed(self, prompt_tokens: int, output_tokens: int) -> int:
        return -(-(prompt_tokens + output_tokens) // self.config.tokens_per_block)

    def _free_slots(self) -> int:
        cached = len(self._gpu) - (len(self._free_lru) if self.config.ideal_cache else 0)
        return self.config.gpu_blocks - cached - self._uncached_slots

    def _lookup(self, r: _Req) -> tuple[int, int]:
        """(GPU-hit blocks, CPU-hit blocks) of the prompt's cached prefix."""
        limit = min(len(r.hashes), (r.num_prompt_tokens - 1) // self.config.tokens_per_block)
        g = 0
        while g < limit and r.hashes[g] in self._gpu:
            g += 1
        c = 0
        while g + c < limit and (r.hashes[g + c] in self._cpu or r.hashes[g + c] in self._gpu):
            c += 1
        return g, c

    def _try_admit(self, r: _Req, view: _PlanView | None) -> bool:
        g, c = self._lookup(r)
        hit = r.hashes[:g + c]
        loads = [i for i in range(g, g + c) if r.hashes[i] not in self._gpu]
        total = self._slots_needed(r.num_prompt_tokens, r.req.output_tokens)
        need = total - (g + c - len(loads))
        pinned_evictable = sum(1 for h in hit if h in self._free_lru)
        if self.config.ideal_cache:
            if need + pinned_evictable > self._free_slots():
                return False
        elif need > self._free_slots() + len(self._free_lru) - pinned_evictable:
            return False
        ready = self.now_s
        for h in hit:
            if h in self._gpu:
                ready = max(ready, self._pin(h))
        self._cpu_protected = {r.hashes[i] for i in loads}
        ready = max(ready, self._make_room(need, view))
        self._cpu_protected = set()
        for i in loads:
            ready = max(ready, self._load(r.hashes[i], r.hashes[i - 1] if i else None, ref=1))
        r.held = list(hit)
        r.own_slots = total - len(hit)
        self._uncached_slots += r.own_slots
        r.phase, r.admit_s, r.ready_s = _Phase.PREFILL, self.now_s, ready
        r.gpu_hits, r.cpu_hits = g, c
        r.prefilled_tokens = (g + c) * self.config.tokens_per_block
        r.cached_upto = g + c
        for h in hit:
            if h in self._prefetched:
                self._prefetched.discard(h)
                self._counts["prefetch_used_blocks"] += 1
        counts = self._counts
        counts["lookup_blocks"] += len(r.hashes)  # every full block, as the manager counts
        counts["gpu_hit_blocks"] += g
        counts["cpu_hit_blocks"] += c
        counts["prompt_tokens"] += r.num_prompt_tokens
        counts["computed_prompt_tokens"] += r.num_prompt_tokens - r.prefilled_tokens
        self._emit(RequestStarted(
            self.engine_id, r.req.request_id, tuple(r.hashes), r.num_prompt_tokens,
            num_gpu_hit_blocks=g, num_cpu_hit_blocks=c, workflow_id=r.req.workflow_id,
            agent=r.req.agent, tenant=r.req.tenant, now_s=self.now_s))
        return True

    def _pin(self, h: bytes) -> float:
        b = self._gpu[h]
        if b.ref_cnt == 0:
            del self._free_lru[h]
        b.ref_cnt += 1
        return b.ready_s

    def _make_room(self, need: int, view: _PlanView | None) -> float:
        """Evict until ``need`` slots are free; returns when the last write-back is done."""
        victims = self._victims(need - self._free_slots(), view)
        assert len(victims) >= need - self._free_slots()
        return self._evict(victims, view)

    def _evict(self, victims: Sequence[bytes], view: _PlanView | None) -> float:
        ready = self.now_s
        for h in victims:
            b = self._gpu[h]
            assert b.ref_cnt == 0
            if view is not None and h in view.offload and h not in self._cpu \
                    and not self.config.write_through_per_iteration:
                ready = max(ready, self._write_back(h, b.parent))
            del self._gpu[h]
            del self._free_lru[h]
            self._prefetched.discard(h)
        if victims:
            self._counts["gpu_evictions"] += len(victims)
            self._emit(BlockRemoved(self.engine_id, tuple(victims), Tier.GPU))
        return ready

    # ------------------------------------------------------------------ transfers
    def _load(self, h: bytes, parent: bytes | None, *, ref: int) -> float:
        """CPU -> GPU copy of one block into a free slot; returns when it lands."""
        start = max(self._h2d_free_s, self.now_s)
        took = self.cost.h2d_s(self._block_bytes)
        self._h2d_free_s = start + took
        self._serial_s += (1.0 - self.cost.transfer_overlap) * took
        self._counts["h2d_bytes"] += self._block_bytes
        self._gpu[h] = _GpuBlock(parent, ref_cnt=ref, ready_s=self._h2d_free_s)
        if ref == 0:
            self._free_lru[h] = None
        self._cpu.move_to_end(h)
        self._emit(BlockStored(self.engine_id, (h,), parent, self.config.tokens_per_block,
                               Tier.GPU))
        return self._h2d_free_s

    def _write_back(self, h: bytes, parent: bytes | None) -> float:
        """GPU -> CPU copy of one block; returns when it is done."""
        if self.config.cpu_blocks == 0:
            return self.now_s
        if len(self._cpu) >= self.config.cpu_blocks:
            # CPU LRU, sparing blocks about to be loaded by the admission or prefetch at hand.
            old = next((c for c in self._cpu if c not in self._cpu_protected), None)
            if old is None:
                return self.now_s  # the tier is all spoken for: drop instead of writing back
            del self._cpu[old]
            self._counts["cpu_evictions"] += 1
            self._emit(BlockRemoved(self.engine_id, (old,), Tier.CPU))
        start = max(self._d2h_free_s, self.now_s)
        took = self.cost.d2h_s(self._block_bytes)
        self._d2h_free_s = start + took
        self._serial_s += (1.0 - self.cost.transfer_overlap) * took
        self._counts["d2h_bytes"] += self._block_bytes
        self._counts["offloaded_blocks"] += 1
        self._cpu[h] = parent
        self._emit(BlockStored(self.engine_id, (h,), parent, self.config.tokens_per_block,
                               Tier.CPU))
        return self._d2h_free_s

    def _write_through(self, view: _PlanView, budget: int) -> None:
        """The vLLM adapter's host-tier saves for one step (see ``write_through_per_iteration``)."""
        if not self.config.cpu_blocks:
            return
        for h, ranked in write_through_candidates(view.plan, reversed(self._gpu)):
            if budget == 0:
                return
            if not ranked and len(self._cpu) >= self.config.cpu_blocks:
                return
            b = self._gpu.get(h)
            if b is None or h in self._cpu or b.ready_s > self.now_s:
                continue
            self._write_back(h, b.parent)
            budget -= 1

    def _background_transfers(self, view: _PlanView | None) -> None:
        if view is None:
            return
        window = self.now_s + self.config.transfer_window_s
        if self.config.write_through_per_iteration:
            self._write_through(view, self.config.write_through_per_iteration)
        offload = () if self.config.write_through_per_iteration else view.plan.offload
        while (self.config.cpu_blocks and view.offload_cursor < len(offload)
               and self._d2h_free_s <= window):
            h = offload[view.offload_cursor]
            b = self._gpu.get(h)
            if b is not None and b.ready_s > self.now_s:
                break  # still landing: retry next pass
            view.offload_cursor += 1
            if b is not None and h not in self._cpu:
                self._write_back(h, b.parent)
        prefetch = view.plan.prefetch
        while view.prefetch_cursor < len(prefetch) and self._h2d_free_s <= window:
            h = prefetch[view.prefetch_cursor]
            parent = self._cpu.get(h)
            orphan = (self.config.prefetch_needs_parent and parent is not None
                      and parent not in self._gpu)
            if h not in self._gpu and h in self._cpu and not orphan:
                if self._free_slots() == 0:
                    victims = self._victims(1, view, for_prefetch=True)
                    if not victims:
                        break  # no room now; retry next pass
                    self._cpu_protected = {h}
                    self._evict(victims, view)
                    self._cpu_protected = set()
                self._load(h, self._cpu[h], ref=0)
                self._prefetched.add(h)
                self._counts["prefetched_blocks"] += 1
            view.prefetch_cursor += 1

    # ------------------------------------------------------------------ completion
    def _cache_computed(self, r: _Req) -> None:
        """Full prompt blocks computed so far become cached, chunk by chunk as in vLLM
        (a block cached meanwhile by another request stays a private duplicate)."""
        upto = min(len(r.hashes), r.prefilled_tokens // self.config.tokens_per_block)
        stored: list[int] = []
        for i in range(r.cached_upto, upto):
            h = r.hashes[i]
            if h in self._gpu:
                continue
            self._gpu[h] = _GpuBlock(r.hashes[i - 1] if i else None, ref_cnt=1,
                                     ready_s=self.now_s)
            r.held.append(h)
            r.own_slots -= 1
            self._uncached_slots -= 1
            stored.append(i)
        for run in _runs(stored):
            parent = r.hashes[run[0] - 1] if run[0] else None
            self._emit(BlockStored(self.engine_id, tuple(r.hashes[i] for i in run), parent,
                                   self.config.tokens_per_block, Tier.GPU))
        r.cached_upto = upto

    def _prefill_done(self, r: _Req) -> None:
        self._cache_computed(r)
        r.phase = _Phase.DECODE
        r.first_token_s = self.now_s
        if r.req.output_tokens:
            r.generated = 1

    def _finish(self, r: _Req) -> RequestResult:
        # Freed in reverse so that a prompt's tail is evicted before its head (as vLLM does).
        for h in reversed(r.held):
            b = self._gpu[h]
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self._free_lru[h] = None
        self._uncached_slots -= r.own_slots
        self._running.remove(r)
        self._counts["requests_finished"] += 1
        self._counts["output_tokens"] += r.req.output_tokens
        self._emit(RequestFinished(self.engine_id, r.req.request_id, r.req.output_tokens,
                                   now_s=self.now_s))
        return RequestResult(
            r.req.request_id, r.req.workflow_id, r.req.agent, r.submit_s, r.admit_s,
            r.first_token_s, self.now_s, r.num_prompt_tokens, r.req.output_tokens, r.gpu_hits,
            r.cpu_hits, r.num_prompt_tokens - (r.gpu_hits + r.cpu_hits)
            * self.config.tokens_per_block, max(0.0, r.ready_s - r.admit_s))

    def _emit(self, event: EngineEvent) -> None:
        if self._sink is not None:
            self._sink(event)


def _runs(indices: list[int]) -> list[list[int]]:
    """Consecutive runs: [1, 2, 4] -> [[1, 2], [4]]."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out
