"""The workload driver: replays trace workflows through a ``SimEngine`` like an orchestrator.

Each workflow runs its rounds (``trace.step_groups``: steps of a parallel group fan out
together) one after another; a round's requests are submitted together and the next round
starts ``think_time_s`` after the slowest of them finishes. Prompts are the trace's segments
materialised by ``pbkv.training.materialize.prompt_token_ids``, so prompts share exactly the KV
blocks their segments share. Workflows arrive at their ``arrival_s`` (open loop, shifted so
the first arrives at 0) or, with ``concurrency`` set, as a closed loop that keeps that many
running.

The orchestrator (the in-process ``CacheManager``, or anything with its orchestrator face,
e.g. a gRPC client wrapper) is told every step as it happens::

    start_workflow -> step_started (per step of a round) -> [requests run] ->
    step_finished(ObservedStep with agent, output text, times) per step, in order -> ... ->
    end_workflow

so the predictor in the loop sees the same information, at the same simulated time, that it
would see live. Nothing here decides cache policy.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pbkv.engine_adapter.block_hash import block_hashes
from pbkv.engine_adapter.sim.engine import EngineStats, RequestResult, SimEngine, SimRequest
from pbkv.predictor.forecast import ObservedStep
from pbkv.training.materialize import prompt_token_ids
from pbkv.training.trace import Workflow, step_groups


class Orchestrator(Protocol):
    """The orchestrator face of ``pbkv.cache_manager.manager.CacheManager``."""

    def start_workflow(self, workflow_id: str, app: str, *, tenant: str = ..., task: str = ...,
                       now_s: float | None = ...) -> None: ...

    def step_started(self, workflow_id: str, agent: str, *, parallel_group: str | None = ...,
                     now_s: float | None = ...) -> None: ...

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Any: ...

    def end_workflow(self, workflow_id: str, *, now_s: float | None = ...) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    concurrency: int | None = None  # closed loop of this many workflows; None: arrival_s
    think_time_s: float = 0.0       # orchestrator/tool time between a round and the next
    vocab_size: int = 32_000
    max_sim_s: float = 1e7          # safety bound on simulated time

    def __post_init__(self) -> None:
        if self.concurrency is not None and (not isinstance(self.concurrency, int)
                                             or self.concurrency <= 0):
            raise ValueError(f"ReplayConfig.concurrency must be a positive integer or None, "
                             f"got {self.concurrency!r}")
        if not self.think_time_s >= 0:
            raise ValueError(f"ReplayConfig.think_time_s must be >= 0, got {self.think_time_s}")
        if self.vocab_size <= 16:
            raise ValueError(f"ReplayConfig.vocab_size must exceed 16, got {self.vocab_size}")


@dataclass(frozen=True, slots=True)
class WorkflowResult:
    workflow_id: str
    app: str
    arrival_s: float
    start_s: float
    end_s: float
    num_steps: int

    @property
    def latency_s(self) -> float:
        return self.end_s - self.arrival_s


@dataclass(frozen=True, slots=True)
class ReplayResult:
    workflows: tuple[WorkflowResult, ...]
    requests: tuple[RequestResult, ...]
    engine: EngineStats
    makespan_s: float

    @property
    def mean_latency_s(self) -> float:
        return sum(w.latency_s for w in self.workflows) / len(self.workflows)

    @property
    def p95_latency_s(self) -> float:
        return percentile([w.latency_s for w in self.workflows], 95)

    @property
    def throughput_wf_per_s(self) -> float:
        return len(self.workflows) / self.makespan_s if self.makespan_s > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        e = self.engine
        return {
            "workflows": len(self.workflows),
            "requests": len(self.requests),
            "mean_latency_s": self.mean_latency_s,
            "p95_latency_s": self.p95_latency_s,
            "makespan_s": self.makespan_s,
            "throughput_wf_per_s": self.throughput_wf_per_s,
            "throughput_tokens_per_s": (e.prompt_tokens + e.output_tokens) / self.makespan_s
            if self.makespan_s > 0 else 0.0,
            "gpu_hit_rate": e.gpu_hit_rate,
            "cpu_hit_rate": e.cpu_hit_rate,
            "prompt_tokens": e.prompt_tokens,
            "recomputed_tokens": e.computed_prompt_tokens,
            "h2d_bytes": e.h2d_bytes,
            "d2h_bytes": e.d2h_bytes,
            "transfer_bytes": e.h2d_bytes + e.d2h_bytes,
            "stall_s": e.stall_s,
            "busy_s": e.busy_s,
            "prefetched_blocks": e.prefetched_blocks,
            "prefetch_used_blocks": e.prefetch_used_blocks,
            "gpu_evictions": e.gpu_evictions,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class PromptCache:
    """Token ids and block hashes per (workflow, step), shared across replays of one workload
    (hashing is the driver's main cost, and every policy sees the same prompts)."""

    def __init__(self, vocab_size: int, tokens_per_block: int) -> None:
        self.vocab_size = vocab_size
        self.tokens_per_block = tokens_per_block
        self._cache: dict[tuple[str, str, int], tuple[tuple[int, ...], tuple[bytes, ...]]] = {}

    def get(self, workflow: Workflow, step_index: int) -> tuple[tuple[int, ...],
                                                                tuple[bytes, ...]]:
        key = (workflow.tenant, workflow.workflow_id, step_index)
        hit = self._cache.get(key)
        if hit is None:
            tokens = tuple(prompt_token_ids(workflow, step_index, self.vocab_size))
            hit = (tokens, tuple(block_hashes(tokens, self.tokens_per_block)))
            self._cache[key] = hit
        return hit


@dataclass(slots=True)
class _Live:
    workflow: Workflow
    arrival_s: float
    start_s: float
    rounds: list[list[int]]
    round_index: int = 0
    outstanding: set[str] = field(default_factory=set)
    round_results: dict[int, RequestResult] = field(default_factory=dict)


class Replayer:
    """Replays ``workflows`` through ``engine`` (see the module docstring)."""

    def __init__(self, engine: SimEngine, workflows: Sequence[Workflow],
                 config: ReplayConfig = ReplayConfig(), orchestrator: Orchestrator | None = None,
                 prompts: PromptCache | None = None) -> None:
        if not workflows:
            raise ValueError("nothing to replay: the workload has no workflows")
        ids = [w.workflow_id for w in workflows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"workflow id {dup!r} appears twice; ids must be unique")
        empty = [w.workflow_id for w in workflows if not w.steps]
        if empty:
            raise ValueError(f"workflow {empty[0]!r} has no steps")
        self.engine = engine
        self.config = config
        self.orchestrator = orchestrator
        self.prompts = prompts or PromptCache(config.vocab_size, engine.config.tokens_per_block)
        if self.prompts.tokens_per_block != engine.config.tokens_per_block:
            raise ValueError("PromptCache and engine disagree on tokens_per_block")
        self._workflows = list(workflows)
        self._live: dict[str, _Live] = {}
        self._by_request: dict[str, str] = {}
        self._timers: list[tuple[float, int, str, str]] = []  # (time, seq, kind, key)
        self._seq = 0
        self._done: list[WorkflowResult] = []
        self._requests: list[RequestResult] = []

    def run(self) -> ReplayResult:
        t0 = self.engine.now_s
        queue = self._schedule_arrivals(t0)
        while queue or self._live or self._timers:
            self._fire_timers(queue)
            if not self._live and not self._timers and not queue:
                break
            next_t = self._timers[0][0] if self._timers else None
            if self.engine.idle and next_t is None:
                raise RuntimeError("replay stuck: nothing running and nothing scheduled")
            for result in self.engine.run(until_s=next_t):
                self._on_finished(result)
            if self.engine.now_s - t0 > self.config.max_sim_s:
                raise RuntimeError(f"replay exceeded max_sim_s={self.config.max_sim_s}")
        return ReplayResult(tuple(self._done), tuple(self._requests), self.engine.stats(),
                            self.engine.now_s - t0)

    # -------------------------------------------------------------- arrivals and timers
    def _schedule_arrivals(self, t0: float) -> list[Workflow]:
        """Returns the closed loop's waiting queue (empty in open loop)."""
        if self.config.concurrency is not None:
            queue = list(self._workflows)
            for _ in range(min(self.config.concurrency, len(queue))):
                self._timer(t0, "arrive", queue.pop(0).workflow_id)
            return queue
        first = min((w.arrival_s or 0.0) for w in self._workflows)
        for w in self._workflows:
            self._timer(t0 + (w.arrival_s or 0.0) - first, "arrive", w.workflow_id)
        return []

    def _timer(self, at_s: float, kind: str, key: str) -> None:
        heapq.heappush(self._timers, (at_s, self._seq, kind, key))
        self._seq += 1

    def _fire_timers(self, queue: list[Workflow]) -> None:
        by_id = None
        while self._timers and self._timers[0][0] <= self.engine.now_s:
            _, _, kind, key = heapq.heappop(self._timers)
            if kind == "arrive":
                if by_id is None:
                    by_id = {w.workflow_id: w for w in self._workflows}
                self._start(by_id[key])
            else:
                self._start_round(self._live[key])
        if self.config.concurrency is not None:
            while queue and len(self._live) + self._pending_arrivals() < self.config.concurrency:
                self._start(queue.pop(0))

    def _pending_arrivals(self) -> int:
        return sum(1 for t in self._timers if t[2] == "arrive")

    # -------------------------------------------------------------- workflow life cycle
    def _start(self, w: Workflow) -> None:
        now = self.engine.now_s
        live = _Live(w, now, now, step_groups(w))
        self._live[w.workflow_id] = live
        if self.orchestrator is not None:
            self.orchestrator.start_workflow(w.workflow_id, w.app, tenant=w.tenant, task=w.task,
                                             now_s=now)
        self._start_round(live)

    def _start_round(self, live: _Live) -> None:
        w = live.workflow
        now = self.engine.now_s
        for i in live.rounds[live.round_index]:
            step = w.steps[i]
            if self.orchestrator is not None:
                self.orchestrator.step_started(w.workflow_id, step.agent,
                                               parallel_group=step.parallel_group, now_s=now)
            tokens, hashes = self.prompts.get(w, i)
            rid = f"{w.tenant}/{w.workflow_id}/{i}"
            self.engine.submit(SimRequest(rid, tokens, step.output_tokens, w.workflow_id,
                                          step.agent, w.tenant, block_hashes=hashes))
            live.outstanding.add(rid)
            self._by_request[rid] = w.workflow_id

    def _on_finished(self, result: RequestResult) -> None:
        self._requests.append(result)
        live = self._live[self._by_request.pop(result.request_id)]
        live.outstanding.discard(result.request_id)
        step_index = int(result.request_id.rsplit("/", 1)[1])
        live.round_results[step_index] = result
        if live.outstanding:
            return
        w = live.workflow
        if self.orchestrator is not None:
            for i in live.rounds[live.round_index]:
                step, r = w.steps[i], live.round_results[i]
                self.orchestrator.step_finished(w.workflow_id, ObservedStep(
                    agent=step.agent, parallel_group=step.parallel_group,
                    output_text=step.output_text, output_tokens=step.output_tokens,
                    start_s=r.submit_s, end_s=r.finish_s, phase=step.phase))
        live.round_results.clear()
        live.round_index += 1
        now = self.engine.now_s
        if live.round_index == len(live.rounds):
            del self._live[w.workflow_id]
            if self.orchestrator is not None:
                self.orchestrator.end_workflow(w.workflow_id, now_s=now)
            self._done.append(WorkflowResult(w.workflow_id, w.app, live.arrival_s,
                                             live.start_s, now, len(w.steps)))
        elif self.config.think_time_s > 0:
            self._timer(now + self.config.think_time_s, "round", w.workflow_id)
        else:
            self._start_round(live)


def replay(engine: SimEngine, workflows: Sequence[Workflow], config: ReplayConfig = ReplayConfig(),
           orchestrator: Orchestrator | None = None,
           prompts: PromptCache | None = None) -> ReplayResult:
    """Convenience: ``Replayer(...).run()``."""
    return Replayer(engine, workflows, config, orchestrator, prompts).run()
