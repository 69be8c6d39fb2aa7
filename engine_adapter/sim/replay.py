"""The workload driver: replays trace workflows through a ``SimEngine`` like an orchestrator.

Each workflow runs its rounds (``trace.step_groups``: steps of a parallel group fan out
together) one after another; a round's requests are submitted together and the next round
starts ``think_time_s`` after the slowest of them finishes. Prompts are the trace's segments
materialised by ``pbkv.training.materialize.prompt_token_ids``, so prompts share exactly the KV
blocks their segments share. Workflows arrive at their ``arrival_s`` (open loop, shifted so
the first arrives at 0) or, with ``concurrency`` set, as a closed loop that keeps that many
running.

The workflow side (rounds, orchestrator calls, results) is ``pbkv.engine_adapter.replay``'s
``WorkflowDriver``, shared with the vLLM replayer. The orchestrator (the in-process
``CacheManager``, or anything with its orchestrator face, e.g. ``ClientOrchestrator`` for a
service) is told every step as it happens::

    start_workflow -> step_started (per step of a round) -> [requests run] ->
    step_finished(ObservedStep with agent, output text, times) per step, in order -> ... ->
    end_workflow

so the predictor in the loop sees the same information, at the same simulated time, that it
would see live. Nothing here decides cache policy.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from pbkv.engine_adapter.block_hash import block_hashes
from pbkv.engine_adapter.replay import (
    Orchestrator,
    ReplayResult,
    StepOutcome,
    WorkflowDriver,
    check_workload,
    round_pauses,
)
from pbkv.engine_adapter.sim.engine import EngineStats, RequestResult, SimEngine, SimRequest
from pbkv.trace import Workflow
from pbkv.training.materialize import prompt_token_ids


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    concurrency: int | None = None  # closed loop of this many workflows; None: arrival_s
    think_time_s: float = 0.0  # orchestrator/tool time between a round and the next
    # Also pause before each round as long as the trace's step times show (round_pauses;
    # the synthetic workloads' pause_s knob writes them).
    trace_pauses: bool = False
    vocab_size: int = 32_000
    max_sim_s: float = 1e7  # safety bound on simulated time

    def __post_init__(self) -> None:
        if self.concurrency is not None and (
            not isinstance(self.concurrency, int) or self.concurrency <= 0
        ):
            raise ValueError(
                f"ReplayConfig.concurrency must be a positive integer or None, "
                f"got {self.concurrency!r}"
            )
        if not self.think_time_s >= 0:
            raise ValueError(f"ReplayConfig.think_time_s must be >= 0, got {self.think_time_s}")
        if self.vocab_size <= 16:
            raise ValueError(f"ReplayConfig.vocab_size must exceed 16, got {self.vocab_size}")


def engine_summary(e: EngineStats, makespan_s: float) -> dict[str, float | int]:
    """The simulated engine's numbers in ``ReplayResult.summary()``."""
    return {
        "throughput_tokens_per_s": (e.prompt_tokens + e.output_tokens) / makespan_s
        if makespan_s > 0
        else 0.0,
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
        "dropped_writebacks": e.dropped_writebacks,
        "planner_s": e.planner_s,
    }


class PromptCache:
    """Token ids and block hashes per (workflow, step), shared across replays of one workload
    (hashing is the driver's main cost, and every policy sees the same prompts)."""

    def __init__(self, vocab_size: int, tokens_per_block: int) -> None:
        self.vocab_size = vocab_size
        self.tokens_per_block = tokens_per_block
        self._cache: dict[tuple[str, str, int], tuple[tuple[int, ...], tuple[bytes, ...]]] = {}

    def get(self, workflow: Workflow, step_index: int) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        key = (workflow.tenant, workflow.workflow_id, step_index)
        hit = self._cache.get(key)
        if hit is None:
            tokens = tuple(prompt_token_ids(workflow, step_index, self.vocab_size))
            hit = (tokens, tuple(block_hashes(tokens, self.tokens_per_block)))
            self._cache[key] = hit
        return hit


class Replayer:
    """Replays ``workflows`` through ``engine`` (see the module docstring)."""

    def __init__(
        self,
        engine: SimEngine,
        workflows: Sequence[Workflow],
        config: ReplayConfig = ReplayConfig(),
        orchestrator: Orchestrator | None = None,
        prompts: PromptCache | None = None,
    ) -> None:
        check_workload(workflows)
        self.engine = engine
        self.config = config
        self.prompts = prompts or PromptCache(config.vocab_size, engine.config.tokens_per_block)
        if self.prompts.tokens_per_block != engine.config.tokens_per_block:
            raise ValueError("PromptCache and engine disagree on tokens_per_block")
        self.driver = WorkflowDriver(orchestrator, self._submit, lambda: self.engine.now_s)
        self._workflows = list(workflows)
        self._timers: list[tuple[float, int, str, str]] = []  # (time, seq, kind, key)
        self._seq = 0
        self._requests: list[RequestResult] = []

    def run(self) -> ReplayResult:
        t0 = self.engine.now_s
        queue = self._schedule_arrivals(t0)
        while queue or self.driver.live or self._timers:
            self._fire_timers(queue)
            if not self.driver.live and not self._timers and not queue:
                break
            next_t = self._timers[0][0] if self._timers else None
            if self.engine.idle and next_t is None:
                raise RuntimeError("replay stuck: nothing running and nothing scheduled")
            for result in self.engine.run(until_s=next_t):
                self._on_finished(result)
            if self.engine.now_s - t0 > self.config.max_sim_s:
                raise RuntimeError(f"replay exceeded max_sim_s={self.config.max_sim_s}")
        stats = self.engine.stats()
        makespan = self.engine.now_s - t0
        return ReplayResult(
            tuple(self.driver.done),
            tuple(self._requests),
            stats,
            makespan,
            engine_summary(stats, makespan),
        )

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
                self.driver.start(by_id[key])
            else:
                self.driver.start_round(key)
        if self.config.concurrency is not None:
            while queue and (
                len(self.driver.live) + self._pending_arrivals() < self.config.concurrency
            ):
                self.driver.start(queue.pop(0))

    def _pending_arrivals(self) -> int:
        return sum(1 for t in self._timers if t[2] == "arrive")

    # -------------------------------------------------------------- requests
    def _submit(self, request_id: str, w: Workflow, step_index: int) -> None:
        step = w.steps[step_index]
        tokens, hashes = self.prompts.get(w, step_index)
        self.engine.submit(
            SimRequest(
                request_id,
                tokens,
                step.output_tokens,
                w.workflow_id,
                step.agent,
                w.tenant,
                block_hashes=hashes,
            )
        )

    def _on_finished(self, result: RequestResult) -> None:
        self._requests.append(result)
        step = self.driver.step_of(result.request_id)
        next_round = self.driver.finish(
            result.request_id,
            StepOutcome(step.output_tokens, step.output_text, result.submit_s, result.finish_s),
        )
        if next_round is None:
            return
        pause = self.config.think_time_s
        if self.config.trace_pauses:
            live = self.driver.live[next_round]
            pause += round_pauses(live.workflow)[live.round_index]
        if pause > 0:
            self._timer(self.engine.now_s + pause, "round", next_round)
        else:
            self.driver.start_round(next_round)


def replay(
    engine: SimEngine,
    workflows: Sequence[Workflow],
    config: ReplayConfig = ReplayConfig(),
    orchestrator: Orchestrator | None = None,
    prompts: PromptCache | None = None,
) -> ReplayResult:
    """Convenience: ``Replayer(...).run()``."""
    return Replayer(engine, workflows, config, orchestrator, prompts).run()
