"""The simulated engine's scheduler: continuous batching in vLLM V1's order, on the cost model's
clock.

Contract (the simulator's counterpart of nano-vllm's ``Scheduler``): it owns the waiting queue,
the running requests and the engine clock ``now_s``; it asks the GPU pool
(``can_allocate``, ``pin``, ``reserve``, ``cache_computed``, ``release``) and the host tier
(``make_room``, ``load``, ``background``) and never touches their state. One ``iterate``:

1. pull the plan (``plan_view.follow``) and run the host tier's background passes; with
   ``charge_planner`` the pull's measured CPU time (and the event sink's, see ``SimEngine``)
   is added to the clock, and with ``plan_delay_s`` the step sees the plan pulled that long
   ago (none until one is that old);
2. running prefills whose loads have landed take the token budget (``max_batch_tokens``
   less one token per decoding request), in admission order;
3. waiting requests are admitted FCFS while budget, ``max_batch_seqs`` and memory last: the
   prompt is looked up (GPU hits, then the run the CPU tier holds), its hits pinned, room
   made, its CPU hits loaded and slots for the whole request reserved; the head of the queue
   not fitting stops admission (so a request admitted after another one's prefill hits the
   blocks it computed). Like vLLM, the last prompt token is always computed;
4. one step is charged ``cost.iteration_s`` plus the copy time the host tier could not hide;
   prefill chunks advance (full prompt blocks become cached as each chunk completes), every
   decoding request makes one token. With no chunk, decode-only steps up to the next finish,
   arrival bound, landed load or freed link are taken in one go; with nothing to batch but
   loads in flight, the clock jumps to the first landing (``stall_s``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from pbkv.cache_manager.events import CachePlan, EngineEvent, RequestFinished, RequestStarted
from pbkv.engine_adapter.block_hash import block_hashes
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.gpu_pool import GpuBlockPool
from pbkv.engine_adapter.sim.host_tier import HostTier
from pbkv.engine_adapter.sim.plan_view import PlanView, follow
from pbkv.engine_adapter.sim.records import EngineConfig, RequestResult, SimRequest

PlanSource = Callable[[str], CachePlan | None]


class Phase(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class SchedRequest:
    req: SimRequest
    hashes: list[bytes]
    submit_s: float
    phase: Phase = Phase.WAITING
    held: list[bytes] = field(default_factory=list)  # cached blocks it pins, chain order
    own_slots: int = 0  # slots it holds that are not (yet) cached blocks
    prefilled_tokens: int = 0
    cached_upto: int = 0  # prompt blocks below this index are cached or duplicates
    generated: int = 0
    ready_s: float = 0.0  # its loads / write-backs are done
    admit_s: float = 0.0
    first_token_s: float = 0.0
    gpu_hits: int = 0
    cpu_hits: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.req.token_ids)


class Scheduler:
    """Batches requests over ``pool`` and ``host``; see the module docstring."""

    def __init__(
        self,
        config: EngineConfig,
        cost: CostModel,
        pool: GpuBlockPool,
        host: HostTier,
        *,
        emit: Callable[[EngineEvent], None],
        plans: PlanSource | None,
        start_s: float = 0.0,
    ) -> None:
        self.config = config
        self.cost = cost
        self._pool = pool
        self._host = host
        self._emit = emit
        self._plans = plans
        self.now_s = start_s
        self._waiting: deque[SchedRequest] = deque()
        self._running: list[SchedRequest] = []
        self.view: PlanView | None = None
        self.counts: dict[str, float] = dict.fromkeys(
            (
                "iterations",
                "busy_s",
                "stall_s",
                "requests_finished",
                "prompt_tokens",
                "computed_prompt_tokens",
                "output_tokens",
                "lookup_blocks",
                "gpu_hit_blocks",
                "cpu_hit_blocks",
                "planner_s",
            ),
            0,
        )
        self._pulled: deque[tuple[float, CachePlan | None]] = deque()  # plan_delay_s history

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def slots_needed(self, prompt_tokens: int, output_tokens: int) -> int:
        return -(-(prompt_tokens + output_tokens) // self.config.tokens_per_block)

    def submit(self, request: SimRequest) -> None:
        """Queue a request at ``now_s`` (it is admitted by the next iteration that fits it)."""
        need = self.slots_needed(len(request.token_ids), request.output_tokens)
        if need > self.config.gpu_blocks:
            raise ValueError(
                f"request {request.request_id!r} needs {need} GPU blocks "
                f"({len(request.token_ids)} prompt + {request.output_tokens} "
                f"output tokens); the engine has {self.config.gpu_blocks}"
            )
        if not request.token_ids:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        if request.output_tokens < 0:
            raise ValueError(f"request {request.request_id!r}: output_tokens < 0")
        if request.block_hashes is None:
            hashes = block_hashes(request.token_ids, self.config.tokens_per_block)
        elif len(request.block_hashes) != len(request.token_ids) // self.config.tokens_per_block:
            raise ValueError(
                f"request {request.request_id!r}: {len(request.block_hashes)} "
                f"block hashes for {len(request.token_ids)} tokens"
            )
        else:
            hashes = list(request.block_hashes)
        self._waiting.append(SchedRequest(request, hashes, self.now_s))

    # ------------------------------------------------------------------ one iteration
    def iterate(self, until_s: float | None) -> list[RequestResult] | None:
        """One engine step (see the module docstring): the requests it finished, or ``None``
        when there is nothing to do."""
        view = self._pull_plan()
        self._host.background(view, self.now_s)
        decoding = [r for r in self._running if r.phase is Phase.DECODE]
        budget = self.config.max_batch_tokens - len(decoding)
        chunks: list[tuple[SchedRequest, int]] = []
        for r in self._running:
            if r.phase is Phase.PREFILL and r.ready_s <= self.now_s and budget > 0:
                n = min(r.num_prompt_tokens - r.prefilled_tokens, budget)
                chunks.append((r, n))
                budget -= n
        while (
            budget > 0
            and self._waiting
            and len(self._running) < self.config.max_batch_seqs
            and self._try_admit(self._waiting[0], view)
        ):
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
        dt = self.cost.iteration_s(
            [(n, r.prefilled_tokens) for r, n in chunks],
            [r.num_prompt_tokens + r.generated for r in decoding],
        )
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

    def _pull_plan(self) -> PlanView | None:
        plan = None
        if self._plans is not None:
            if self.config.charge_planner:
                t0 = time.process_time()
                plan = self._plans(self.config.engine_id)
                self.charge_planner(time.process_time() - t0)
            else:
                plan = self._plans(self.config.engine_id)
        if self.config.plan_delay_s > 0:
            plan = self._delayed(plan)
        self.view = follow(self.view, plan, self.now_s, self.config.plan_max_age_s)
        self._host.view = self.view
        return self.view

    def charge_planner(self, seconds: float) -> None:
        """Planner CPU time (``charge_planner``): the engine waits for it."""
        self.now_s += seconds
        self.counts["planner_s"] += seconds

    def _delayed(self, plan: CachePlan | None) -> CachePlan | None:
        """The plan pulled ``plan_delay_s`` ago (none before the first one is that old)."""
        pulled = self._pulled
        if not pulled or pulled[-1][1] is not plan:
            pulled.append((self.now_s, plan))
        cutoff = self.now_s - self.config.plan_delay_s
        while len(pulled) > 1 and pulled[1][0] <= cutoff:
            pulled.popleft()
        return pulled[0][1] if pulled[0][0] <= cutoff else None

    def _advance(self, dt: float, iterations: int) -> None:
        dt += self._host.take_serial()  # copies the engine itself executes (overlap < 1)
        self.now_s += dt
        self.counts["busy_s"] += dt
        self.counts["iterations"] += iterations

    def _wait_for_transfers(self, until_s: float | None) -> list[RequestResult] | None:
        pending = [r.ready_s for r in self._running if r.phase is Phase.PREFILL]
        if not pending:
            return None
        t = min(pending)
        if until_s is not None:
            t = min(t, until_s)
        self.counts["stall_s"] += t - self.now_s
        self.now_s = t
        return []

    def _decode_run(
        self, decoding: list[SchedRequest], until_s: float | None
    ) -> list[RequestResult]:
        """Decode-only iterations change nothing but counters until the first finish, an
        arrival, a landed load or a link that frees up: take them in one go."""
        k_max = min(r.req.output_tokens - r.generated for r in decoding)
        bounds = [r.ready_s for r in self._running if r.phase is Phase.PREFILL]
        if until_s is not None:
            bounds.append(until_s)
        bounds += self._host.link_free_times(self.view)
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

    # ------------------------------------------------------------------ admission
    def _lookup(self, r: SchedRequest) -> tuple[int, int]:
        """(GPU-hit blocks, CPU-hit blocks) of the prompt's cached prefix: the longest run of
        GPU blocks, then the longest run the CPU tier holds (vLLM's OffloadingConnector looks
        up from the end of the GPU prefix and stops at the first block it lacks). A block
        after the first GPU miss is a hit only if the tier holds it (it is then loaded)."""
        limit = min(len(r.hashes), (r.num_prompt_tokens - 1) // self.config.tokens_per_block)
        g = 0
        while g < limit and r.hashes[g] in self._pool:
            g += 1
        c = 0
        while g + c < limit and r.hashes[g + c] in self._host:
            c += 1
        return g, c

    def _try_admit(self, r: SchedRequest, view: PlanView | None) -> bool:
        self._host.touch(r.hashes)  # as vLLM's connector does on every lookup
        g, c = self._lookup(r)
        hit = r.hashes[: g + c]
        loads = [i for i in range(g, g + c) if r.hashes[i] not in self._pool]
        total = self.slots_needed(r.num_prompt_tokens, r.req.output_tokens)
        need = total - (g + c - len(loads))
        if not self._pool.can_allocate(need, hit):
            return False
        ready = self.now_s
        for i, h in enumerate(hit):
            if h in self._pool:
                ready = max(ready, self._pool.pin(h))
                if i >= g:  # on the GPU past the gap: vLLM loads the tier's copy anyway
                    ready = max(ready, self._host.copy_in(self.now_s))
        with self._host.protecting({r.hashes[i] for i in loads}):
            ready = max(ready, self._host.make_room(need, view, self.now_s))
        for i in loads:
            ready = max(
                ready,
                self._host.load(
                    r.hashes[i], r.hashes[i - 1] if i else None, ref=1, now_s=self.now_s
                ),
            )
        self._host.store(r.hashes, 0, g, self.now_s)  # store on compute: GPU hits too
        r.held = list(hit)
        r.own_slots = total - len(hit)
        self._pool.reserve(r.own_slots)
        r.phase, r.admit_s, r.ready_s = Phase.PREFILL, self.now_s, ready
        r.gpu_hits, r.cpu_hits = g, c
        r.prefilled_tokens = (g + c) * self.config.tokens_per_block
        r.cached_upto = g + c
        self._pool.note_hits(hit)
        counts = self.counts
        counts["lookup_blocks"] += len(r.hashes)  # every full block, as the manager counts
        counts["gpu_hit_blocks"] += g
        counts["cpu_hit_blocks"] += c
        counts["prompt_tokens"] += r.num_prompt_tokens
        counts["computed_prompt_tokens"] += r.num_prompt_tokens - r.prefilled_tokens
        self._emit(
            RequestStarted(
                self.config.engine_id,
                r.req.request_id,
                tuple(r.hashes),
                r.num_prompt_tokens,
                num_gpu_hit_blocks=g,
                num_cpu_hit_blocks=c,
                workflow_id=r.req.workflow_id,
                agent=r.req.agent,
                tenant=r.req.tenant,
                now_s=self.now_s,
            )
        )
        return True

    # ------------------------------------------------------------------ completion
    def _cache_computed(self, r: SchedRequest) -> None:
        """Full prompt blocks computed so far become cached, chunk by chunk as in vLLM."""
        upto = min(len(r.hashes), r.prefilled_tokens // self.config.tokens_per_block)
        stored = self._pool.cache_computed(r.hashes, r.cached_upto, upto, self.now_s)
        r.held += stored
        r.own_slots -= len(stored)
        self._host.store(r.hashes, r.cached_upto, upto, self.now_s)
        r.cached_upto = upto

    def _prefill_done(self, r: SchedRequest) -> None:
        self._cache_computed(r)
        r.phase = Phase.DECODE
        r.first_token_s = self.now_s
        if r.req.output_tokens:
            r.generated = 1

    def _finish(self, r: SchedRequest) -> RequestResult:
        self._pool.release(r.held, r.own_slots)
        self._running.remove(r)
        self.counts["requests_finished"] += 1
        self.counts["output_tokens"] += r.req.output_tokens
        req, engine_id = r.req, self.config.engine_id
        self._emit(RequestFinished(engine_id, req.request_id, req.output_tokens, now_s=self.now_s))
        return RequestResult(
            r.req.request_id,
            r.req.workflow_id,
            r.req.agent,
            r.submit_s,
            r.admit_s,
            r.first_token_s,
            self.now_s,
            r.num_prompt_tokens,
            r.req.output_tokens,
            r.gpu_hits,
            r.cpu_hits,
            r.num_prompt_tokens - (r.gpu_hits + r.cpu_hits) * self.config.tokens_per_block,
            max(0.0, r.ready_s - r.admit_s),
        )

    # ------------------------------------------------------------------ checks
    def check_integrity(self) -> None:
        """Queued requests wait, running ones do not; the pool's ref counts and uncached
        slots are exactly what the running requests hold."""
        assert all(r.phase is Phase.WAITING and not r.held for r in self._waiting)
        assert all(r.phase is not Phase.WAITING for r in self._running)
        assert len(self._running) <= self.config.max_batch_seqs
        refs: dict[bytes, int] = {}
        own = 0
        for r in self._running:
            own += r.own_slots
            for h in r.held:
                refs[h] = refs.get(h, 0) + 1
        self._pool.check_integrity(refs, own)
