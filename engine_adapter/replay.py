"""What every replayer shares: driving trace workflows through an engine like an orchestrator.

Two replayers differ only in how they run an engine: ``sim/replay.py`` (a ``SimEngine`` on a
simulated clock, open or closed loop, think time) and ``bench/vllm_replay.py`` (a real vLLM
engine on the wall clock, closed loop). Both use a ``WorkflowDriver`` for the workflow side::

    start(workflow)            -> orchestrator.start_workflow, then the first round
    start_round(workflow_id)   -> per step of the round: orchestrator.step_started, submit()
    finish(request_id, ...)    -> when the round's last request is done: step_finished for
                                  every step of the round, in trace order; then the workflow
                                  ends (end_workflow) or waits for its next round

and return one ``ReplayResult``. The orchestrator is anything with the orchestrator face of
``CacheManager`` (the in-process manager itself, or ``ClientOrchestrator`` for a service).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from pbkv.predictor.forecast import ObservedStep
from pbkv.service.client import PbkvError
from pbkv.trace import Step, Workflow, step_groups


class Orchestrator(Protocol):
    """The orchestrator face of ``pbkv.cache_manager.manager.CacheManager``."""

    def start_workflow(
        self,
        workflow_id: str,
        app: str,
        *,
        tenant: str = ...,
        task: str = ...,
        now_s: float | None = ...,
    ) -> None: ...

    def step_started(
        self,
        workflow_id: str,
        agent: str,
        *,
        parallel_group: str | None = ...,
        now_s: float | None = ...,
    ) -> None: ...

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Any: ...

    def end_workflow(self, workflow_id: str, *, now_s: float | None = ...) -> None: ...


class ClientOrchestrator:
    """The orchestrator calls sent to a running pbkv service through a
    ``pbkv.service.client.PbkvClient``.

    Tenant: a workflow's tenant, given at its start, goes with every later call for it (the
    service keys workflows by tenant and id). Failures: fail open like the engine link -- a
    call that fails (service restarting or gone) is counted in ``num_errors`` (the last one
    kept in ``last_error``) and skipped, so a replay keeps serving; callers that need every
    call to land (the demo, tests) check ``num_errors == 0``. Only channel errors fail open
    (``PbkvError``, the client's error for a gRPC status, and a raw ``grpc.RpcError``); any
    other exception is a bug and propagates."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.num_errors = 0
        self.last_error: Exception | None = None
        self._tenants: dict[str, str] = {}

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PbkvError, grpc.RpcError) as exc:
            self.num_errors += 1
            self.last_error = exc
            return None

    def start_workflow(
        self,
        workflow_id: str,
        app: str,
        *,
        tenant: str = "default",
        task: str = "",
        now_s: float | None = None,
    ) -> None:
        self._tenants[workflow_id] = tenant
        self._call(
            self.client.start_workflow, workflow_id, app, task=task, now_s=now_s, tenant=tenant
        )

    def step_started(
        self,
        workflow_id: str,
        agent: str,
        *,
        parallel_group: str | None = None,
        now_s: float | None = None,
    ) -> None:
        self._call(
            self.client.step_started,
            workflow_id,
            agent,
            parallel_group=parallel_group,
            now_s=now_s,
            tenant=self._tenants.get(workflow_id),
        )

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Any:
        fields = {
            "output_text": step.output_text,
            "output_tokens": step.output_tokens,
            "parallel_group": step.parallel_group,
            "start_s": step.start_s,
            "end_s": step.end_s,
            "phase": step.phase,
            "tenant": self._tenants.get(workflow_id),
        }
        return self._call(
            self.client.step_finished,
            workflow_id,
            step.agent,
            **{k: v for k, v in fields.items() if v is not None},
        )

    def end_workflow(self, workflow_id: str, *, now_s: float | None = None) -> None:
        self._call(
            self.client.end_workflow,
            workflow_id,
            now_s=now_s,
            tenant=self._tenants.pop(workflow_id, None),
        )


def round_pauses(workflow: Workflow) -> list[float]:
    """The pause before each round (``step_groups``) the trace's times show: the first start
    of a round less the last end of the one before (0 for the first round, a missing time, or
    overlapping rounds). Replays add it to their think time with ``trace_pauses``."""
    out: list[float] = []
    prev_end: float | None = None
    for group in step_groups(workflow):
        starts = [workflow.steps[i].start_s for i in group]
        ends = [workflow.steps[i].end_s for i in group]
        gap = 0.0
        if prev_end is not None and all(t is not None for t in starts):
            gap = max(0.0, min(starts) - prev_end)
        out.append(gap)
        prev_end = max(ends) if all(t is not None for t in ends) else None
    return out


@dataclass(frozen=True, slots=True)
class WorkflowResult:
    workflow_id: str
    app: str
    arrival_s: float
    start_s: float
    end_s: float
    num_steps: int
    cpu_s: float = 0.0  # process CPU seconds while the workflow was in flight (real engines)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.arrival_s


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """One replay: per-workflow results, per-request results in finish order (the engine's
    own record type), the engine's counters (``engine``) and the flat numbers of them that
    ``summary`` reports (``engine_summary``, chosen by the replayer that knows the engine)."""

    workflows: tuple[WorkflowResult, ...]
    requests: tuple[Any, ...]
    engine: Any
    makespan_s: float  # simulated seconds (simulator) or wall seconds (real engine)
    engine_summary: Mapping[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0  # process CPU seconds of the whole replay (real engines)

    @property
    def latencies_s(self) -> list[float]:
        return [w.latency_s for w in self.workflows]

    @property
    def mean_latency_s(self) -> float:
        return sum(self.latencies_s) / len(self.workflows) if self.workflows else 0.0

    @property
    def median_latency_s(self) -> float:
        return statistics.median(self.latencies_s) if self.workflows else 0.0

    @property
    def p95_latency_s(self) -> float:
        return percentile(self.latencies_s, 95)

    @property
    def mean_cpu_s(self) -> float:
        return statistics.fmean(w.cpu_s for w in self.workflows) if self.workflows else 0.0

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(w.cpu_s for w in self.workflows) if self.workflows else 0.0

    @property
    def throughput_wf_per_s(self) -> float:
        return len(self.workflows) / self.makespan_s if self.makespan_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "workflows": len(self.workflows),
            "requests": len(self.requests),
            "mean_latency_s": self.mean_latency_s,
            "p95_latency_s": self.p95_latency_s,
            "makespan_s": self.makespan_s,
            "throughput_wf_per_s": self.throughput_wf_per_s,
            **self.engine_summary,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def check_workload(workflows: Sequence[Workflow]) -> None:
    if not workflows:
        raise ValueError("nothing to replay: the workload has no workflows")
    ids = [w.workflow_id for w in workflows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"workflow id {dup!r} appears twice; ids must be unique")
    empty = [w.workflow_id for w in workflows if not w.steps]
    if empty:
        raise ValueError(f"workflow {empty[0]!r} has no steps")


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What the engine reports of one finished request (``None``: unknown)."""

    output_tokens: int
    output_text: str | None = None
    start_s: float | None = None
    end_s: float | None = None


@dataclass(slots=True)
class _Live:
    workflow: Workflow
    arrival_s: float
    cpu0_s: float
    rounds: list[list[int]]
    round_index: int = 0
    outstanding: set[str] = field(default_factory=set)
    outcomes: dict[int, StepOutcome] = field(default_factory=dict)


class WorkflowDriver:
    """The workflow side of a replay (see the module docstring). ``submit(request_id,
    workflow, step_index)`` hands one step's request to the engine; ``clock`` gives the
    replay's time (``stamp``: also pass it to the orchestrator as ``now_s``; a real engine's
    orchestrator stamps its own); ``cpu_clock`` measures each workflow's CPU seconds."""

    def __init__(
        self,
        orchestrator: Orchestrator | None,
        submit: Callable[[str, Workflow, int], None],
        clock: Callable[[], float],
        *,
        stamp: bool = True,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.submit = submit
        self.clock = clock
        self.stamp = stamp
        self.cpu_clock = cpu_clock
        self.live: dict[str, _Live] = {}
        self.done: list[WorkflowResult] = []
        self._by_request: dict[str, str] = {}

    def _now(self) -> float | None:
        return self.clock() if self.stamp else None

    def step_of(self, request_id: str) -> Step:
        """The trace step an outstanding request runs."""
        live = self.live[self._by_request[request_id]]
        return live.workflow.steps[int(request_id.rsplit("/", 1)[1])]

    def start(self, w: Workflow) -> None:
        now = self.clock()
        cpu = self.cpu_clock() if self.cpu_clock is not None else 0.0
        live = _Live(w, now, cpu, step_groups(w))
        self.live[w.workflow_id] = live
        if self.orchestrator is not None:
            self.orchestrator.start_workflow(
                w.workflow_id, w.app, tenant=w.tenant, task=w.task, now_s=self._now()
            )
        self.start_round(w.workflow_id)

    def start_round(self, workflow_id: str) -> None:
        live = self.live[workflow_id]
        w = live.workflow
        for i in live.rounds[live.round_index]:
            step = w.steps[i]
            if self.orchestrator is not None:
                self.orchestrator.step_started(
                    w.workflow_id, step.agent, parallel_group=step.parallel_group, now_s=self._now()
                )
            rid = f"{w.tenant}/{w.workflow_id}/{i}"
            self.submit(rid, w, i)
            live.outstanding.add(rid)
            self._by_request[rid] = w.workflow_id

    def finish(self, request_id: str, outcome: StepOutcome) -> str | None:
        """Record a finished request. Returns the workflow id when this completed a round and
        the workflow has another (the caller starts it, now or after think time)."""
        live = self.live[self._by_request.pop(request_id)]
        live.outstanding.discard(request_id)
        live.outcomes[int(request_id.rsplit("/", 1)[1])] = outcome
        if live.outstanding:
            return None
        w = live.workflow
        if self.orchestrator is not None:
            for i in live.rounds[live.round_index]:
                step, out = w.steps[i], live.outcomes[i]
                self.orchestrator.step_finished(
                    w.workflow_id,
                    ObservedStep(
                        agent=step.agent,
                        parallel_group=step.parallel_group,
                        output_text=out.output_text,
                        output_tokens=out.output_tokens,
                        start_s=out.start_s,
                        end_s=out.end_s,
                        phase=step.phase,
                    ),
                )
        live.outcomes.clear()
        live.round_index += 1
        if live.round_index < len(live.rounds):
            return w.workflow_id
        now = self.clock()
        del self.live[w.workflow_id]
        if self.orchestrator is not None:
            self.orchestrator.end_workflow(w.workflow_id, now_s=self._now())
        cpu = self.cpu_clock() - live.cpu0_s if self.cpu_clock is not None else 0.0
        self.done.append(
            WorkflowResult(
                w.workflow_id, w.app, live.arrival_s, live.arrival_s, now, len(w.steps), cpu
            )
        )
        return None
