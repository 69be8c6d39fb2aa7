"""The engine-agnostic core: workflows and forecasts in, cache plans out.

Three faces (see ``docs/cache-manager.md``)::

    orchestrator --start/step_started/step_finished/end--> CacheManager --forecast--> predictor
    engine(s)    --on_engine_event (blocks, requests)-->   |  per engine: BlockDirectory
                 <-------------- plan(engine_id) ---------  |              Planner(policy)
    operator     --stats / set_predictor ----------------> '  ConsumerIndex, OnlineAccuracy

Every engine (simulated, vLLM, remote over gRPC) is driven by this one class, so every policy
has one code path. Work is lazy and incremental: events only mark blocks and workflows dirty;
``plan`` re-ranks what is dirty and returns the previous plan object when nothing changed.
Not thread-safe: the service serialises calls.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pbkv.cache_manager.accuracy import OnlineAccuracy
from pbkv.cache_manager.block_directory import Block, BlockDirectory
from pbkv.cache_manager.consumers import ConsumerIndex, GroupKey
from pbkv.cache_manager.errors import (
    CacheManagerError,
    DuplicateWorkflow,
    EndedWorkflow,
    OutOfOrderStep,
    UnknownEngine,
    UnknownWorkflow,
)
from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachePlan,
    EngineEvent,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.planner import Planner
from pbkv.cache_manager.policies import POLICIES, BlockFacts, OraclePolicy, Policy, combine
from pbkv.cache_manager.scorer import BlockScore, Outlook, ScorerConfig
from pbkv.cache_manager.stats import HitStats, ManagerStats
from pbkv.predictor.forecast import Forecast, ObservedStep, Predictor, WorkflowState
from pbkv.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from pbkv.trace import Workflow

log = logging.getLogger(__name__)

_GROUP_EPS = 1e-3  # an agent group's outlook must move this much to re-rank its blocks


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    policy: str = "pbkv"  # lru, lru-offload, kvflow, pbkv, oracle
    horizon: int = 4  # steps ahead the predictor is asked about
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    load_ahead: int = 1  # pbkv / oracle: prefetch blocks of agents due within this many steps
    min_prefetch_p: float = 0.5  # pbkv: conservative P(reuse) a prefetch needs
    min_offload_p: float = 0.7  # pbkv: P(reuse) a block needs for a CPU copy once it is full
    oracle_offload_steps: float = 4.0  # oracle: CPU copies only of blocks due this soon
    kvflow_hold_step: int = 3  # KVFlow: steps-to-execution is capped at hold_step + 1
    kvflow_load_ahead_step: int = 2  # KVFlow's load_ahead_step
    fallback_accuracy: float = 0.3  # pbkv falls back to LRU when top-1 accuracy drops below
    recover_accuracy: float = 0.4  # ... and returns once it is back at or above this
    accuracy_window: int = 50  # judged forecasts the accuracy is measured over
    min_accuracy_samples: int = 20  # no fall-back decision before this many
    plan_max_blocks: int = 2_048  # blocks a plan names (evict_first + keep)
    offload_window_blocks: int = 2_048  # queue head examined for write-back
    transfer_budget_blocks: int = 256  # prefetches per plan
    rescore_budget: int = 32  # time-drifting ranks refreshed per plan
    rescore_after_s: float = 10.0  # ... once they are this old
    max_users_per_block: int = 32
    bytes_per_token: int | None = None  # default: scorer.bytes_per_token
    top_kept: int = 10  # BlockScores the stats carry for the dashboard (``top_kept``)
    ended_memory: int = 100_000  # finished workflow ids remembered (EndedWorkflow, dead blocks)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            POLICIES.get(self.policy)  # raises, listing the known names
        ints = {"horizon": 1, "load_ahead": 0, "kvflow_hold_step": 0,
                "kvflow_load_ahead_step": 0, "accuracy_window": 1, "min_accuracy_samples": 1,
                "plan_max_blocks": 0, "offload_window_blocks": 0, "transfer_budget_blocks": 0,
                "rescore_budget": 0, "max_users_per_block": 1, "top_kept": 0,
                "ended_memory": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"ManagerConfig.{name} must be an int >= {low}, got {value!r}")
        if not (isinstance(self.oracle_offload_steps, int | float)
                and self.oracle_offload_steps >= 0):
            raise ValueError(f"ManagerConfig.oracle_offload_steps must be >= 0, "
                             f"got {self.oracle_offload_steps!r}")
        for name in ("min_prefetch_p", "min_offload_p", "fallback_accuracy",
                     "recover_accuracy"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ValueError(f"ManagerConfig.{name} must be in [0, 1], got {value!r}")
        if self.recover_accuracy < self.fallback_accuracy:
            raise ValueError(f"ManagerConfig.recover_accuracy ({self.recover_accuracy}) must be"
                             f" >= fallback_accuracy ({self.fallback_accuracy})")
        if not (isinstance(self.rescore_after_s, int | float) and self.rescore_after_s >= 0):
            raise ValueError(f"ManagerConfig.rescore_after_s must be >= 0, "
                             f"got {self.rescore_after_s!r}")
        if not isinstance(self.scorer, ScorerConfig):
            raise ValueError(f"ManagerConfig.scorer must be a ScorerConfig, got {self.scorer!r}")
        if self.bytes_per_token is not None and (not isinstance(self.bytes_per_token, int)
                                                 or self.bytes_per_token < 1):
            raise ValueError(f"ManagerConfig.bytes_per_token must be an int >= 1 or None, "
                             f"got {self.bytes_per_token!r}")


class _Workflow:
    """A running workflow (the ``WorkflowView`` policies read)."""

    __slots__ = ("workflow_id", "app", "state", "forecast", "running", "running_group",
                 "unjudged", "outlooks")

    def __init__(self, state: WorkflowState) -> None:
        self.workflow_id = state.workflow_id
        self.app = state.app
        self.state = state
        self.forecast: Forecast | None = None
        self.running: dict[str, int] = {}
        self.running_group: str | None = None
        self.unjudged: Forecast | None = None  # judged by the next step that starts
        self.outlooks: dict[str, Outlook] = {}


_CPU_ROOM_AGAIN = 0.9  # a full CPU tier counts as having room again below this share


class _Engine:
    __slots__ = ("directory", "planner", "cpu_full")

    def __init__(self, directory: BlockDirectory, planner: Planner) -> None:
        self.directory = directory
        self.planner = planner
        self.cpu_full = False

    def update_cpu_full(self) -> None:
        """Full at capacity, with room again only below ``_CPU_ROOM_AGAIN`` of it (hysteresis:
        a flip re-ranks every block, and a tier at capacity loses and gains one block per
        write-back). Policies value CPU copies by it (``BlockFacts.cpu_full``)."""
        d = self.directory
        if self.cpu_full:
            full = d.cpu_used >= _CPU_ROOM_AGAIN * d.cpu_blocks
        else:
            full = d.cpu_blocks > 0 and d.cpu_used >= d.cpu_blocks
        if full != self.cpu_full:
            self.cpu_full = full
            self.planner.dirty.update(b.block_hash for b in d)


class CacheManager:
    def __init__(self, config: ManagerConfig | None = None, predictor: Predictor | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ManagerConfig()
        self.policy: Policy = POLICIES.create(self.config.policy, self.config)
        self._predictor = predictor
        self._clock = clock
        self._workflows: dict[str, _Workflow] = {}
        self._by_app: dict[str, dict[str, None]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._engines: dict[str, _Engine] = {}
        self._consumers = ConsumerIndex()
        self._group_outlook: dict[GroupKey, Outlook | None] = {}
        self._dirty_workflows: set[str] = set()
        self._dirty_apps: set[str] = set()
        c = self.config
        self._accuracy = OnlineAccuracy(window=c.accuracy_window,
                                        min_samples=c.min_accuracy_samples,
                                        fallback_below=c.fallback_accuracy,
                                        recover_at=c.recover_accuracy)
        self._hits: dict[tuple[str, str], HitStats] = {}  # (dimension, key) -> hits
        self._counts = dict.fromkeys(("reused_tokens", "recomputed_tokens", "prefetched",
                                      "prefetch_used", "prefetch_wasted", "predictor_errors"), 0)
        self._predictor_log = ThrottledLog(log, "pbkv predictor")  # its fail-open errors

    # ================================================================== orchestrator face
    def start_workflow(self, workflow_id: str, app: str, *, tenant: str = "default",
                       task: str = "", now_s: float | None = None) -> None:
        _check_name("workflow_id", workflow_id)
        _check_name("app", app)
        if workflow_id in self._workflows or workflow_id in self._ended:
            raise DuplicateWorkflow(f"workflow_id {workflow_id!r} was already started")
        now = self._now(now_s)
        wf = _Workflow(WorkflowState(workflow_id, app, task, tenant, (), now, now))
        self._workflows[workflow_id] = wf
        self._by_app.setdefault(app, {})[workflow_id] = None
        self.policy.workflow_started(wf)
        self._dirty_workflows.add(workflow_id)
        self._dirty_apps.add(app)

    def step_started(self, workflow_id: str, agent: str, *, parallel_group: str | None = None,
                     now_s: float | None = None) -> None:
        _check_name("agent", agent)
        wf = self._active(workflow_id)
        if wf.unjudged is not None:
            self._accuracy.record(wf.unjudged, agent)
            wf.unjudged = None
        wf.running[agent] = wf.running.get(agent, 0) + 1
        wf.running_group = parallel_group
        self._dirty_workflows.add(workflow_id)

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Forecast | None:
        wf = self._active(workflow_id)
        if not isinstance(step, ObservedStep):
            raise CacheManagerError(f"step must be an ObservedStep, got {type(step).__name__}")
        if not wf.running.get(step.agent):
            raise OutOfOrderStep(f"workflow {workflow_id!r}: step.agent {step.agent!r} finished"
                                 f" but no step of it was started")
        wf.running[step.agent] -= 1
        if not wf.running[step.agent]:
            del wf.running[step.agent]
        if not wf.running:
            wf.running_group = None
        wf.state = wf.state.extended(step)
        wf.forecast = self._predict(wf.state)
        wf.unjudged = wf.forecast
        self._dirty_workflows.add(workflow_id)
        return wf.forecast

    def end_workflow(self, workflow_id: str, *, now_s: float | None = None) -> None:
        wf = self._active(workflow_id)
        del self._workflows[workflow_id]
        # Without an attached engine nobody calls plan(), which is what empties the dirty set.
        self._dirty_workflows.discard(workflow_id)
        apps = self._by_app[wf.app]
        del apps[workflow_id]
        self.remember_ended((workflow_id,))
        self._mark_blocks(self._consumers.end_workflow(workflow_id))
        # Blocks it used but no longer consumes must be re-ranked (they may be dead now).
        self._dirty_apps.add(wf.app)
        self.policy.workflow_ended(wf)
        if self._predictor is not None:
            try:
                self._predictor.observe_finished(wf.state)
            except Exception as exc:  # noqa: BLE001 - a predictor bug must not stop serving
                self._counts["predictor_errors"] += 1
                self._predictor_log.failed("observe_finished", exc)

    def forecast(self, workflow_id: str) -> Forecast | None:
        return self._active(workflow_id).forecast

    def workflow_state(self, workflow_id: str) -> WorkflowState:
        return self._active(workflow_id).state

    def active_workflows(self) -> list[WorkflowState]:
        return [wf.state for wf in self._workflows.values()]

    # The manager is the one owner of which workflows and engines exist; these answer it.
    def has_workflow(self, workflow_id: str) -> bool:
        """``workflow_id`` is running (started, not ended)."""
        return workflow_id in self._workflows

    def has_ended(self, workflow_id: str) -> bool:
        """``workflow_id`` ended (among the last ``ended_memory`` ended ids)."""
        return workflow_id in self._ended

    def active_count(self) -> int:
        return len(self._workflows)

    def remember_ended(self, workflow_ids: Iterable[str]) -> None:
        """Record ids as ended, oldest first (``end_workflow`` does; a restarted service
        restores the ids its trace store saw end), keeping the last ``ended_memory``."""
        for workflow_id in workflow_ids:
            self._ended.pop(workflow_id, None)
            self._ended[workflow_id] = None
        while len(self._ended) > self.config.ended_memory:
            self._ended.popitem(last=False)

    # ================================================================== engine face
    def attach_engine(self, engine_id: str, *, gpu_blocks: int, cpu_blocks: int,
                      tokens_per_block: int) -> None:
        _check_name("engine_id", engine_id)
        if engine_id in self._engines:
            raise CacheManagerError(f"engine_id {engine_id!r} is already attached")
        c = self.config
        bpt = c.bytes_per_token if c.bytes_per_token is not None else c.scorer.bytes_per_token
        directory = BlockDirectory(engine_id, gpu_blocks=gpu_blocks, cpu_blocks=cpu_blocks,
                                   tokens_per_block=tokens_per_block, bytes_per_token=bpt,
                                   max_users_per_block=c.max_users_per_block)
        planner = Planner(directory, self.policy, plan_max_blocks=c.plan_max_blocks,
                          offload_window_blocks=c.offload_window_blocks,
                          transfer_budget_blocks=c.transfer_budget_blocks,
                          rescore_budget=c.rescore_budget, rescore_after_s=c.rescore_after_s)
        self._engines[engine_id] = _Engine(directory, planner)

    def detach_engine(self, engine_id: str) -> None:
        self._engine(engine_id)
        del self._engines[engine_id]

    def has_engine(self, engine_id: str) -> bool:
        return engine_id in self._engines

    def engine_ids(self) -> tuple[str, ...]:
        """Attached engines, in attach order."""
        return tuple(self._engines)

    def on_engine_event(self, event: EngineEvent) -> None:
        eng = self._engine(getattr(event, "engine_id", None))
        d = eng.directory
        match event:
            case BlockStored():
                if event.tokens_per_block != d.tokens_per_block:
                    raise CacheManagerError(
                        f"engine {d.engine_id!r}: tokens_per_block {event.tokens_per_block} "
                        f"differs from the attached {d.tokens_per_block}")
                was_cpu = {h for h in event.block_hashes if (b := d.get(h)) and b.on_cpu
                           and not b.on_gpu}
                stored = d.store(event.block_hashes, event.parent_hash, event.tier)
                if event.tier is Tier.GPU:
                    for b in stored:
                        if b.block_hash in was_cpu and b.block_hash in eng.planner.last_prefetch:
                            b.prefetched = True
                            self._counts["prefetched"] += 1
            case BlockRemoved():
                for b in d.remove(event.block_hashes, event.tier):
                    if b.prefetched and not b.on_gpu:
                        b.prefetched = False
                        self._counts["prefetch_wasted"] += 1
            case AllBlocksCleared():
                if event.tier in (None, Tier.GPU):
                    self._counts["prefetch_wasted"] += sum(b.prefetched for b in d)
                d.clear(event.tier)
            case RequestStarted():
                self._request_started(eng, event)
            case RequestFinished():
                d.request_finished(event.request_id, event.now_s)
            case _:
                raise CacheManagerError(f"unknown engine event type {type(event).__name__}")

    def plan(self, engine_id: str) -> CachePlan:
        eng = self._engine(engine_id)
        now = self._clock()
        self._refresh_outlooks()
        eng.update_cpu_full()
        eng.planner.refresh(self._facts_for(eng), now)
        fallback = self.policy.uses_predictor and self._accuracy.fallback
        return eng.planner.plan(engine_id, now, fallback=fallback)

    # ================================================================== operator face
    def set_predictor(self, predictor: Predictor) -> None:
        """Hot reload: later forecasts come from ``predictor``; current ones are redone."""
        self._predictor = predictor
        for wf in self._workflows.values():
            if wf.state.steps:
                wf.forecast = self._predict(wf.state)
                wf.unjudged = wf.forecast
                self._dirty_workflows.add(wf.workflow_id)

    def set_oracle_future(self, workflows: Sequence[Workflow], *,
                          prompt_blocks: Callable[[Workflow, int], Sequence[bytes]] | None
                          = None) -> None:
        """Give the ``oracle`` policy every workflow's real future (evaluation only).
        ``prompt_blocks(workflow, step_index)`` -> that step's prompt block hashes makes its
        next-use distances exact per block (else per agent)."""
        if not isinstance(self.policy, OraclePolicy):
            raise CacheManagerError(f"set_oracle_future needs policy 'oracle', "
                                    f"this manager runs {self.policy.name!r}")
        self.policy.set_future(workflows, prompt_blocks)
        self._dirty_workflows.update(self._workflows)
        for eng in self._engines.values():
            eng.planner.dirty.update(b.block_hash for b in eng.directory)

    def stats(self) -> ManagerStats:
        c = self._counts
        used, wasted = c["prefetch_used"], c["prefetch_wasted"]
        total = self._hits.get(("all", ""), HitStats())
        on_demand = total.cpu_hits

        def dim(name: str) -> dict[str, HitStats]:
            return {k: v for (d, k), v in self._hits.items() if d == name}

        return ManagerStats(
            policy=self.policy.name,
            fallback_lru=self.policy.uses_predictor and self._accuracy.fallback,
            active_workflows=len(self._workflows),
            engines=tuple(self._engines),
            hits=total, hits_by_engine=dim("engine"), hits_by_app=dim("app"),
            hits_by_agent=dim("agent"),
            reused_tokens=c["reused_tokens"], recomputed_tokens=c["recomputed_tokens"],
            prefetched_blocks=c["prefetched"], prefetch_used_blocks=used,
            prefetch_wasted_blocks=wasted,
            prefetch_precision=used / (used + wasted) if used + wasted else None,
            prefetch_recall=used / (used + on_demand) if used + on_demand else None,
            predictor_top1_accuracy=self._accuracy.top1,
            predictor_brier=self._accuracy.brier,
            predictor_samples=self._accuracy.samples,
            predictor_errors=c["predictor_errors"],
            gpu_blocks_cached=sum(e.directory.gpu_used for e in self._engines.values()),
            cpu_blocks_cached=sum(e.directory.cpu_used for e in self._engines.values()),
            directory_blocks=sum(len(e.directory) for e in self._engines.values()),
            plans_built=sum(e.planner.plans_built for e in self._engines.values()),
            top_kept=self.top_kept(self.config.top_kept),
        )

    def top_kept(self, n: int, engine_id: str | None = None) -> tuple[BlockScore, ...]:
        """The ``n`` most valuable blocks the engines keep for a consumer (of ``engine_id``
        only, if given), best first, as of each engine's last plan (a stats query)."""
        engines = self._engines.values() if engine_id is None else [self._engine(engine_id)]
        top = [s for eng in engines for s in eng.planner.top_kept(n)]
        top.sort(key=lambda s: -s.score)
        return tuple(top[:n])

    def check_integrity(self) -> None:
        """Every engine's directory and planner invariants (tests run it after each step)."""
        for eng in self._engines.values():
            eng.directory.check_integrity()
            eng.planner.check_integrity()
        for app, ids in self._by_app.items():
            for wid in ids:
                assert self._workflows[wid].app == app
        assert sum(len(v) for v in self._by_app.values()) == len(self._workflows)

    # ================================================================== internals
    def _now(self, now_s: float | None) -> float:
        return self._clock() if now_s is None else now_s

    def _engine(self, engine_id: str | None) -> _Engine:
        eng = self._engines.get(engine_id)  # type: ignore[arg-type]
        if eng is None:
            known = ", ".join(sorted(self._engines)) or "(none)"
            raise UnknownEngine(f"engine_id {engine_id!r} is not attached; attached: {known}")
        return eng

    def _active(self, workflow_id: str) -> _Workflow:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            if workflow_id in self._ended:
                raise EndedWorkflow(f"workflow_id {workflow_id!r} has ended")
            raise UnknownWorkflow(f"workflow_id {workflow_id!r} was never started")
        return wf

    def _predict(self, state: WorkflowState) -> Forecast | None:
        if self._predictor is None:
            return None
        try:
            fc = self._predictor.forecast(state, self.config.horizon)
        except Exception as exc:  # noqa: BLE001 - fail open: no forecast means recency / LRU
            self._counts["predictor_errors"] += 1
            self._predictor_log.failed("forecast", exc)
            return None
        if not _valid_forecast(fc, state.workflow_id):
            self._counts["predictor_errors"] += 1
            self._predictor_log.failed("forecast", f"invalid forecast for workflow "
                                                   f"{state.workflow_id!r}")
            return None
        return fc

    def _request_started(self, eng: _Engine, ev: RequestStarted) -> None:
        d = eng.directory
        n = len(ev.block_hashes)
        for name in ("num_gpu_hit_blocks", "num_cpu_hit_blocks", "num_prompt_tokens"):
            value = getattr(ev, name)
            if not isinstance(value, int) or value < 0:
                raise CacheManagerError(f"RequestStarted {ev.request_id!r}: {name} must be an "
                                        f"int >= 0, got {value!r}")
        if ev.num_gpu_hit_blocks + ev.num_cpu_hit_blocks > n:
            raise CacheManagerError(
                f"RequestStarted {ev.request_id!r}: num_gpu_hit_blocks + num_cpu_hit_blocks "
                f"({ev.num_gpu_hit_blocks} + {ev.num_cpu_hit_blocks}) exceeds its {n} blocks")
        # Requests hold at most gpu_blocks blocks that nothing stored yet (a running request
        # is on the GPU), so the directory stays within 2 x gpu_blocks + cpu_blocks.
        unknown = sum(1 for h in ev.block_hashes if d.get(h) is None)
        if unknown and len(d) + unknown > 2 * d.gpu_blocks + d.cpu_blocks:
            raise CacheManagerError(
                f"RequestStarted {ev.request_id!r}: {unknown} unknown blocks would grow engine "
                f"{d.engine_id!r}'s directory past 2 x gpu_blocks + cpu_blocks "
                f"({2 * d.gpu_blocks + d.cpu_blocks})")
        wf = self._workflows.get(ev.workflow_id) if ev.workflow_id is not None else None
        user = (ev.workflow_id, ev.agent or "") if ev.workflow_id is not None else None
        blocks = d.request_started(ev.request_id, ev.block_hashes, user, ev.now_s)
        for b in blocks[:ev.num_gpu_hit_blocks + ev.num_cpu_hit_blocks]:
            if b.prefetched:  # the request's hit prefix (a "CPU hit" may be on the GPU)
                b.prefetched = False
                self._counts["prefetch_used"] += 1
        g, c = ev.num_gpu_hit_blocks, ev.num_cpu_hit_blocks
        for key in (("all", ""), ("engine", d.engine_id),
                    ("app", wf.app if wf is not None else "(untagged)"),
                    ("agent", ev.agent or "(untagged)")):
            self._hits[key] = self._hits.get(key, HitStats()).plus(g, n, c, n - g)
        reused = min((g + c) * d.tokens_per_block, ev.num_prompt_tokens)
        self._counts["reused_tokens"] += reused
        self._counts["recomputed_tokens"] += ev.num_prompt_tokens - reused
        if wf is not None and ev.agent:
            self._mark_blocks(self._consumers.record_prompt(wf.workflow_id, wf.app, ev.agent,
                                                            ev.block_hashes))
            self._dirty_apps.add(wf.app)

    def _mark_blocks(self, hashes: set[bytes] | Sequence[bytes]) -> None:
        if not hashes:
            return
        for eng in self._engines.values():
            eng.planner.dirty.update(hashes)

    def _refresh_outlooks(self) -> None:
        """Recompute the outlooks of workflows whose state changed; mark the blocks whose
        consumers' outlooks moved."""
        for wid in self._dirty_workflows:
            wf = self._workflows.get(wid)
            if wf is None:
                continue
            new = self.policy.outlooks(wf)
            self._mark_blocks(self.policy.blocks_to_refresh(wf))
            old = wf.outlooks
            if new != old:
                wf.outlooks = new
                for agent in self._consumers.agents_of(wid):
                    if new.get(agent) != old.get(agent):  # only prompts whose outlook moved
                        self._mark_blocks(self._own_blocks(wf.app, wid, agent))
                self._dirty_apps.add(wf.app)
        self._dirty_workflows.clear()
        if not self._dirty_apps:
            return
        for group in self._consumers.groups():
            app, agent = group
            if app not in self._dirty_apps:
                continue
            parts = [o for wid in self._by_app.get(app, ())
                     if (o := self._workflows[wid].outlooks.get(agent)) is not None]
            extra = self.policy.group_extra(app, agent)
            if extra is not None:
                parts.append(extra)
            new = combine(parts)
            old = self._group_outlook.get(group)
            if not _close(old, new):
                self._group_outlook[group] = new
                self._mark_blocks(self._consumers.group_blocks(group))
        self._dirty_apps.clear()

    def _own_blocks(self, app: str, workflow_id: str, agent: str) -> Sequence[bytes]:
        """The consumer's last prompt without the agent's shared prefix (those blocks rank by
        the agent group's outlook, re-marked when that moves)."""
        prompt = self._consumers.prompt_of((workflow_id, agent))
        shared = self._consumers.group_blocks((app, agent))
        n = len(shared)
        if n and len(prompt) >= n and prompt[n - 1] == shared[-1]:
            return prompt[n:]
        return prompt

    def _facts_for(self, eng: _Engine) -> Callable[[Block, float], BlockFacts]:
        d = eng.directory
        cpu_full = eng.cpu_full
        consumers = self._consumers
        workflows = self._workflows
        ended = self._ended
        groups = self._group_outlook
        by_app = self._by_app
        tpb = d.tokens_per_block

        def facts(b: Block, now_s: float) -> BlockFacts:
            h = b.block_hash
            outlooks: list[Outlook] = []
            in_groups = consumers.groups_of(h)
            num_consumers = 0
            group_agents: set[str] = set()
            for g in in_groups:
                o = groups.get(g)
                if o is not None:
                    outlooks.append(o)
                num_consumers += len(by_app.get(g[0], ()))
                group_agents.add(g[1])
            for wid, agent in consumers.consumers_of(h):
                if agent in group_agents:
                    continue  # already in the group's outlook
                num_consumers += 1
                o = workflows[wid].outlooks.get(agent)
                if o is not None:
                    outlooks.append(o)
            dead = (not outlooks and bool(b.users) and not consumers.possibly_shared(h)
                    and all(wid in ended for wid, _ in b.users))
            # tail_depth: how far the prompts through this block reach (prefix-aware cost).
            return BlockFacts(b, b.depth * tpb, tpb, (b.tail_depth + 1) * tpb, outlooks, dead,
                              now_s, num_consumers, cpu_full)

        return facts


def _check_name(arg: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise CacheManagerError(f"{arg} must be a non-empty string, got {value!r}")


def _valid_forecast(fc: object, workflow_id: str) -> bool:
    """A forecast the scorer can trust: right type and workflow, finite probabilities in
    [0, 1] (``Forecast`` checks that on construction, but a predictor can hand back anything)."""
    if not isinstance(fc, Forecast) or fc.workflow_id != workflow_id or fc.horizon < 1:
        return False
    if not (isinstance(fc.confidence, int | float) and 0.0 <= fc.confidence <= 1.0):
        return False
    for a in fc.agents:
        if len(a.p_within) != fc.horizon:
            return False
        if not all(isinstance(p, int | float) and 0.0 <= p <= 1.0 for p in a.p_within):
            return False
        if a.eta_steps is not None and not (math.isfinite(a.eta_steps) and a.eta_steps >= 0):
            return False
    return True


def _close(a: Outlook | None, b: Outlook | None) -> bool:
    if a is None or b is None:
        return a is b
    if (a.eta_steps is None) != (b.eta_steps is None):
        return False
    return (abs(a.p - b.p) <= _GROUP_EPS and abs(a.confidence - b.confidence) <= _GROUP_EPS
            and (a.eta_steps is None or abs(a.eta_steps - b.eta_steps) <= _GROUP_EPS))
