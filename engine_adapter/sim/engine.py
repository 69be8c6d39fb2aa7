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

The engine is three parts, each with its contract in its module docstring (split as
nano-vllm splits its engine: a block manager and a scheduler talking through predicates)::

    Scheduler (scheduler.py)     waiting / running requests, the clock; vLLM V1 batching,
        |                        lookup, admission, chunked prefill, decode; CostModel time
        v   can_allocate, pin, reserve, cache_computed, release | make_room, load, background
    GpuBlockPool (gpu_pool.py) <-- HostTier (host_tier.py)
        slots, ref counts, free LRU,   CPU-tier LRU, H2D / D2H link timing, write-back at
        eviction order (plan_order)    eviction, background offload / prefetch / write-through

A request's prompt is looked up block by block: the longest run of GPU-cached blocks (GPU
hits), then the run of blocks the CPU tier holds (CPU hits, loaded over the host link), then
the rest is computed. Slots for the whole request (prompt and output) are reserved at
admission (FCFS; a request that does not fit waits, and so does everything behind it). Blocks
in use are never evicted. Transfers overlap compute: a request whose blocks are still in
flight simply is not batched until they land; other requests keep running. Time the engine
spends with nothing to run but transfers in flight is ``stall_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pbkv.cache_manager.events import EngineEvent
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.gpu_pool import GpuBlockPool
from pbkv.engine_adapter.sim.host_tier import HostTier
from pbkv.engine_adapter.sim.records import EngineConfig, EngineStats, RequestResult, SimRequest
from pbkv.engine_adapter.sim.scheduler import PlanSource, Scheduler

EventSink = Callable[[EngineEvent], None]

__all__ = [
    "EngineConfig",
    "EngineStats",
    "EventSink",
    "PlanSource",
    "RequestResult",
    "SimEngine",
    "SimRequest",
]


class SimEngine:
    """Drive with ``submit`` and ``run``; read ``stats()``. See the module docstring.

    A thin composition: ``pool`` (``GpuBlockPool``), ``host`` (``HostTier``) and
    ``scheduler`` (``Scheduler``), which owns the clock."""

    def __init__(
        self,
        config: EngineConfig,
        cost: CostModel,
        *,
        sink: EventSink | None = None,
        plans: PlanSource | None = None,
        start_s: float = 0.0,
    ) -> None:
        self.config = config
        self.cost = cost
        self._sink = sink
        tpb, eid = config.tokens_per_block, config.engine_id
        self.pool = GpuBlockPool(
            config.gpu_blocks,
            tokens_per_block=tpb,
            engine_id=eid,
            emit=self._emit,
            ideal=config.ideal_cache,
        )
        self.host = HostTier(
            config.cpu_blocks,
            self.pool,
            cost,
            tokens_per_block=tpb,
            engine_id=eid,
            emit=self._emit,
            start_s=start_s,
            transfer_window_s=config.transfer_window_s,
            write_through_per_iteration=config.write_through_per_iteration,
            prefetch_needs_parent=config.prefetch_needs_parent,
            spare_gpu_copies=config.cpu_spares_gpu_copies,
            store_on_compute=config.cpu_write == "compute",
        )
        self.scheduler = Scheduler(
            config, cost, self.pool, self.host, emit=self._emit, plans=plans, start_s=start_s
        )

    # ------------------------------------------------------------------ public face
    @property
    def now_s(self) -> float:
        return self.scheduler.now_s

    @property
    def engine_id(self) -> str:
        return self.config.engine_id

    @property
    def idle(self) -> bool:
        return not self.scheduler.num_waiting and not self.scheduler.num_running

    @property
    def num_active(self) -> int:
        return self.scheduler.num_waiting + self.scheduler.num_running

    def submit(self, request: SimRequest) -> None:
        """Queue a request at ``now_s`` (it is admitted by the next iteration that fits it)."""
        self.scheduler.submit(request)

    def run(self, until_s: float | None = None) -> list[RequestResult]:
        """Advance until at least one request finishes, ``until_s`` is reached, or there is
        nothing left to do (then the clock jumps to ``until_s`` if given)."""
        sched = self.scheduler
        while True:
            if until_s is not None and sched.now_s >= until_s:
                return []
            done = sched.iterate(until_s)
            if done is None:  # nothing to do
                if until_s is not None:
                    sched.now_s = max(sched.now_s, until_s)
                return []
            if done:
                return done

    def stats(self) -> EngineStats:
        counts = self.scheduler.counts | self.pool.counts | self.host.counts
        return EngineStats(
            now_s=self.now_s, **{k: (v if k.endswith("_s") else int(v)) for k, v in counts.items()}
        )

    def gpu_cached(self) -> list[bytes]:
        return self.pool.cached()

    def cpu_cached(self) -> list[bytes]:
        return self.host.cached()

    def evictable(self) -> list[bytes]:
        """GPU blocks with no user, in plain-LRU eviction order (first = evicted first)."""
        return self.pool.evictable()

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()  # and the pool, against what requests hold
        self.host.check_integrity()

    def _emit(self, event: EngineEvent) -> None:
        if self._sink is None:
            return
        if self.config.charge_planner:  # the manager's bookkeeping runs on the engine's time
            t0 = time.process_time()
            self._sink(event)
            self.scheduler.charge_planner(time.process_time() - t0)
        else:
            self._sink(event)
