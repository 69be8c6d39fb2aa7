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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from pbkv.cache_manager import errors, events
from pbkv.cache_manager.accuracy import OnlineAccuracy
from pbkv.cache_manager.config import ManagerConfig
from pbkv.cache_manager.consumers import ConsumerIndex, GroupKey
from pbkv.cache_manager.engines import ManagedEngine, facts_fn
from pbkv.cache_manager.oracle import ClairvoyantPolicy
from pbkv.cache_manager.policies import POLICIES, Policy
from pbkv.cache_manager.prediction import guarded_forecast
from pbkv.cache_manager.scorer import BlockScore, Outlook, combine
from pbkv.cache_manager.stats import COUNTERS, HitStats, ManagerStats, build_stats, count_request
from pbkv.cache_manager.workflows import RunningWorkflow, check_name, outlooks_close
from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import Forecast, ObservedStep, Predictor, WorkflowState
from pbkv.predictor.recalibration import OnlineRecalibrator
from pbkv.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from pbkv.trace import Workflow

__all__ = ["CacheManager", "ManagerConfig"]


class CacheManager:
    def __init__(
        self,
        config: ManagerConfig | None = None,
        predictor: Predictor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or ManagerConfig()
        c = self.config
        self.policy: Policy = POLICIES.create(c.policy, c.policy_config, c.horizon)
        self._predictor = predictor
        self._clock = clock
        self._workflows: dict[str, RunningWorkflow] = {}
        self._by_app: dict[str, dict[str, None]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._engines: dict[str, ManagedEngine] = {}
        self._consumers = ConsumerIndex()
        self._group_outlook: dict[GroupKey, Outlook | None] = {}
        self._dirty_workflows: set[str] = set()
        self._dirty_apps: set[str] = set()
        self._accuracy = OnlineAccuracy(c.accuracy)
        self._recalibration = OnlineRecalibrator(c.recalibration)  # of the top P(next)
        self._hits: dict[tuple[str, str], HitStats] = {}  # (dimension, key) -> hits
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._predictor_log = ThrottledLog(logging.getLogger(__name__), "pbkv predictor")
        self._checked_agents: IdentityMemo[bool] = IdentityMemo()  # forecasts found valid

    # ================================================================== orchestrator face
    def start_workflow(
        self,
        workflow_id: str,
        app: str,
        *,
        tenant: str = "default",
        task: str = "",
        now_s: float | None = None,
    ) -> None:
        check_name("workflow_id", workflow_id)
        check_name("app", app)
        if workflow_id in self._workflows or workflow_id in self._ended:
            raise errors.DuplicateWorkflow(f"workflow_id {workflow_id!r} was already started")
        now = self._now(now_s)
        wf = RunningWorkflow(WorkflowState(workflow_id, app, task, tenant, (), now, now))
        self._workflows[workflow_id] = wf
        self._by_app.setdefault(app, {})[workflow_id] = None
        if len(self._by_app[app]) == 1:  # its app's first running one: unclaimed blocks rerank
            self._mark_blocks(self._consumers.app_blocks(app))
        self.policy.workflow_started(wf)
        self._dirty_workflows.add(workflow_id)
        self._dirty_apps.add(app)

    def step_started(
        self,
        workflow_id: str,
        agent: str,
        *,
        parallel_group: str | None = None,
        now_s: float | None = None,
    ) -> None:
        check_name("agent", agent)
        wf = self._active(workflow_id)
        if wf.unjudged is not None:
            self._accuracy.record(wf.unjudged, agent)
            self._recalibration.observe_forecast(wf.app, wf.unjudged, agent)
            wf.unjudged = None
        wf.begin_step(agent, parallel_group)
        self._dirty_workflows.add(workflow_id)

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Forecast | None:
        wf = self._active(workflow_id)
        if not isinstance(step, ObservedStep):
            raise errors.CacheManagerError(
                f"step must be an ObservedStep, got {type(step).__name__}"
            )
        if not wf.end_step(step.agent):
            raise errors.OutOfOrderStep(
                f"workflow {workflow_id!r}: step.agent {step.agent!r} finished"
                f" but no step of it was started"
            )
        wf.state = wf.state.extended(step)
        wf.forecast = self._predict(wf.state)
        wf.unjudged = wf.forecast
        self._dirty_workflows.add(workflow_id)
        return wf.forecast

    def carried_step(
        self,
        workflow_id: str,
        agent: str,
        *,
        started: bool,
        parallel_group: str | None = None,
        forecast: Forecast | None = None,
    ) -> None:
        """A step of a workflow another service replica owns, as its owner applied it (cluster
        mode): the running steps and, once finished, the owner's ``forecast`` -- what the
        policies' outlooks read. No prediction and no accuracy judging (the owner does both);
        the workflow's state keeps no steps. An unmatched finish is ignored."""
        wf = self._active(workflow_id)
        if started:
            wf.begin_step(agent, parallel_group)
        else:
            wf.end_step(agent)
            wf.forecast = forecast
        self._dirty_workflows.add(workflow_id)

    def end_workflow(self, workflow_id: str, *, now_s: float | None = None) -> None:
        wf = self._remove(workflow_id)
        self.remember_ended((workflow_id,))
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

    def forget_workflows(self, drop: Callable[[str], bool]) -> int:
        """Forget running and ended workflows whose id ``drop`` accepts, as if never started
        (a cluster replica resyncing a partition from its log). Returns how many ran."""
        running = [wid for wid in self._workflows if drop(wid)]
        for wid in running:
            self._remove(wid)
        for wid in [wid for wid in self._ended if drop(wid)]:
            del self._ended[wid]
        return len(running)

    # ================================================================== engine face
    def attach_engine(
        self,
        engine_id: str,
        *,
        gpu_blocks: int,
        cpu_blocks: int,
        tokens_per_block: int,
        shadow: bool = False,
    ) -> None:
        check_name("engine_id", engine_id)
        if engine_id in self._engines:
            raise errors.CacheManagerError(f"engine_id {engine_id!r} is already attached")
        c = self.config
        self._engines[engine_id] = ManagedEngine(
            engine_id,
            self.policy,
            gpu_blocks=gpu_blocks,
            cpu_blocks=cpu_blocks,
            tokens_per_block=tokens_per_block,
            bytes_per_token=c.bytes_per_token,
            directory=c.directory,
            planner=c.planner,
            shadow=shadow,
        )

    def detach_engine(self, engine_id: str) -> None:
        self._engine(engine_id)
        del self._engines[engine_id]

    def has_engine(self, engine_id: str) -> bool:
        return engine_id in self._engines

    def engine_ids(self) -> tuple[str, ...]:
        """Attached engines, in attach order."""
        return tuple(self._engines)

    def on_engine_event(self, event: events.EngineEvent) -> None:
        eng = self._engine(getattr(event, "engine_id", None))
        match event:
            case events.BlockStored() | events.BlockRemoved() | events.AllBlocksCleared():
                eng.apply_block_event(event, self._counts)
            case events.RequestStarted():
                self._request_started(eng, event)
            case events.RequestFinished():
                eng.directory.request_finished(event.request_id, event.now_s)
            case _:
                raise errors.CacheManagerError(f"unknown engine event type {type(event).__name__}")

    def plan(self, engine_id: str) -> events.CachePlan:
        eng = self._engine(engine_id)
        now = self._clock()
        self.policy.observe_survival(eng.survival_s(now), eng.host_survival_s(now))
        self._refresh_outlooks()
        eng.update_cpu_full()
        facts = facts_fn(
            eng, self._consumers, self._workflows, self._ended, self._group_outlook, self._by_app
        )
        eng.planner.refresh(facts, now)
        fallback = self.policy.uses_predictor and self._accuracy.fallback
        return eng.planner.plan(engine_id, now, fallback=fallback)

    # ================================================================== operator face
    def set_predictor(self, predictor: Predictor) -> None:
        """Hot reload: later forecasts come from ``predictor``; current ones are redone (and
        the online recalibration, learnt on the old model's outcomes, starts afresh)."""
        self._predictor = predictor
        self._recalibration = OnlineRecalibrator(self.config.recalibration)
        for wf in self._workflows.values():
            if wf.state.steps:
                wf.forecast = self._predict(wf.state)
                wf.unjudged = wf.forecast
                self._dirty_workflows.add(wf.workflow_id)

    def set_oracle_future(
        self,
        workflows: Sequence[Workflow],
        *,
        prompt_blocks: Callable[[Workflow, int], Sequence[bytes]] | None = None,
    ) -> None:
        """Give the ``clairvoyant`` policy every workflow's real future (evaluation only).
        ``prompt_blocks(workflow, step_index)`` -> that step's prompt block hashes makes its
        next-use distances exact per block (else per agent)."""
        if not isinstance(self.policy, ClairvoyantPolicy):
            raise errors.CacheManagerError(
                "set_oracle_future needs policy 'clairvoyant' (or its old name 'oracle'), "
                f"this manager runs {self.policy.name!r}"
            )
        self.policy.set_future(workflows, prompt_blocks)
        self._dirty_workflows.update(self._workflows)
        for eng in self._engines.values():
            eng.planner.dirty.update(b.block_hash for b in eng.directory)

    def stats(self) -> ManagerStats:
        top, n = self.top_kept(self.config.top_kept), len(self._workflows)
        return build_stats(
            self.policy, self._accuracy, n, self._engines, self._hits, self._counts, top
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

    def _engine(self, engine_id: str | None) -> ManagedEngine:
        eng = self._engines.get(engine_id)  # type: ignore[arg-type]
        if eng is None:
            known = ", ".join(sorted(self._engines)) or "(none)"
            raise errors.UnknownEngine(
                f"engine_id {engine_id!r} is not attached; attached: {known}"
            )
        return eng

    def _active(self, workflow_id: str) -> RunningWorkflow:
        wf = self._workflows.get(workflow_id)
        if wf is None:
            if workflow_id in self._ended:
                raise errors.EndedWorkflow(f"workflow_id {workflow_id!r} has ended")
            raise errors.UnknownWorkflow(f"workflow_id {workflow_id!r} was never started")
        return wf

    def _remove(self, workflow_id: str) -> RunningWorkflow:
        wf = self._active(workflow_id)
        del self._workflows[workflow_id]
        # Without an attached engine nobody calls plan(), which is what empties the dirty set.
        self._dirty_workflows.discard(workflow_id)
        del self._by_app[wf.app][workflow_id]
        # Blocks it used but no longer consumes must be re-ranked (they may be dead now).
        self._mark_blocks(self._consumers.end_workflow(workflow_id))
        if not self._by_app[wf.app]:  # the app's last running workflow: likewise
            self._mark_blocks(self._consumers.app_blocks(wf.app))
        self._dirty_apps.add(wf.app)
        self.policy.workflow_ended(wf)
        return wf

    def _predict(self, state: WorkflowState) -> Forecast | None:
        args = (self.config.horizon, self._recalibration, self._counts, self._predictor_log)
        return guarded_forecast(self._predictor, state, *args, self._checked_agents)

    def _request_started(self, eng: ManagedEngine, ev: events.RequestStarted) -> None:
        eng.check_request(ev)
        d = eng.directory
        wf = self._workflows.get(ev.workflow_id) if ev.workflow_id is not None else None
        user = (ev.workflow_id, ev.agent or "") if ev.workflow_id is not None else None
        blocks = d.request_started(ev.request_id, ev.block_hashes, user, ev.now_s)
        for b in blocks[: ev.num_gpu_hit_blocks + ev.num_cpu_hit_blocks]:
            if b.prefetched:  # the request's hit prefix (a "CPU hit" may be on the GPU)
                b.prefetched = False
                self._counts["prefetch_used"] += 1
        if not eng.shadow:  # a shadow engine's requests are simulated (ManagedEngine)
            app = wf.app if wf is not None else None
            count_request(self._hits, self._counts, ev, d.engine_id, app, d.tokens_per_block)
        if wf is not None and ev.agent:
            self._mark_blocks(
                self._consumers.record_prompt(wf.workflow_id, wf.app, ev.agent, ev.block_hashes)
            )
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
                        self._mark_blocks(self._consumers.own_blocks(wf.app, wid, agent))
                self._dirty_apps.add(wf.app)
        self._dirty_workflows.clear()
        if not self._dirty_apps:
            return
        for app, agent in self._consumers.groups():
            if app not in self._dirty_apps:
                continue
            parts = [
                o
                for wid in self._by_app.get(app, ())
                if (o := self._workflows[wid].outlooks.get(agent)) is not None
            ]
            extra = self.policy.group_extra(app, agent)
            if extra is not None:
                parts.append(extra)
            new = combine(parts)
            old = self._group_outlook.get((app, agent))
            if not outlooks_close(old, new):
                self._group_outlook[app, agent] = new
                self._mark_blocks(self._consumers.group_blocks((app, agent)))
        self._dirty_apps.clear()
