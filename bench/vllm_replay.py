"""Replaying trace-format-v1 workflows through a real vLLM engine, pbkv in the loop.

A closed loop of ``concurrency`` workflows: each runs its rounds (``trace.step_groups``) one
after another; a round's steps go to the engine together; the next round is submitted when
the last step of the previous one finishes. Prompts are ``materialize.prompt_token_ids`` (the
same tokens the simulator sees), outputs are capped at ``max_output_tokens`` and forced to
their length with ``ignore_eos``. The workflow side (rounds, orchestrator calls, results) is
``pbkv.engine_adapter.replay.WorkflowDriver``, shared with the simulator's replayer; the
orchestrator is an in-process ``CacheManager`` (the same one the connector's ``ManagerLink``
reports to, so one process holds the whole loop) or a ``ClientOrchestrator`` for a service.
Its calls carry no ``now_s``: the orchestrator stamps them with its own clock. A workflow's
latency is its wall time from submission of its first round to the end of its last.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pbkv.engine_adapter.replay import (
    Orchestrator,
    ReplayResult,
    StepOutcome,
    WorkflowDriver,
    check_workload,
)
from pbkv.engine_adapter.vllm.tags import make_extra_args
from pbkv.trace import Workflow
from pbkv.training.materialize import prompt_token_ids


@dataclass(frozen=True, slots=True)
class VllmReplayConfig:
    concurrency: int = 4
    max_output_tokens: int = 8
    vocab_size: int = 4096
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.concurrency <= 0:
            raise ValueError(f"concurrency must be positive, got {self.concurrency}")
        if self.max_output_tokens <= 0:
            raise ValueError(f"max_output_tokens must be positive, got {self.max_output_tokens}")


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One finished vLLM request (``ReplayResult.requests``)."""

    request_id: str
    prompt_tokens: int
    cached_tokens: int  # GPU prefix hits plus host-tier loads (vLLM's num_cached_tokens)
    output_token_ids: tuple[int, ...]


@dataclass(slots=True)
class VllmCounters:
    """The engine's side of a vLLM replay (``ReplayResult.engine``)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    host_hit_blocks: int = 0
    engine_step_s: float = 0.0  # wall seconds inside LLMEngine.step (the engine's own time)
    engine_step_cpu_s: float = 0.0  # process CPU seconds inside LLMEngine.step
    steps: int = 0
    preemptions: int = 0  # running requests vLLM's scheduler preempted (freed, recomputed)
    # (step wall s, step CPU s, prefill chunks (new, ctx), decode contexts), when logged
    iterations: list[tuple[float, float, list[tuple[int, int]], list[int]]] = field(
        default_factory=list
    )

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "hit_rate": round(self.hit_rate, 4),
            "host_hit_blocks": self.host_hit_blocks,
            "engine_step_s": round(self.engine_step_s, 4),
            "engine_step_cpu_s": round(self.engine_step_cpu_s, 4),
            "steps": self.steps,
            "preemptions": self.preemptions,
        }


class VllmReplayer:
    """Drives ``llm.llm_engine`` (``add_request`` / ``step``); ``orchestrator`` may be
    ``None`` (stock vLLM: no orchestration events)."""

    def __init__(
        self,
        llm: Any,
        orchestrator: Orchestrator | None,
        config: VllmReplayConfig,
        connector: Any | None = None,
    ) -> None:
        self.llm = llm
        self.engine = llm.llm_engine
        self.orchestrator = orchestrator
        self.config = config
        self.connector = connector

    def run(self, workflows: list[Workflow], label: str = "") -> ReplayResult:
        check_workload(workflows)
        counters = VllmCounters()
        requests: list[RequestOutcome] = []
        t0, cpu0 = time.perf_counter(), time.process_time()
        driver = WorkflowDriver(
            self.orchestrator,
            self._submit,
            lambda: time.perf_counter() - t0,
            stamp=False,
            cpu_clock=time.process_time,
        )
        pending = deque(workflows)
        host_before = self.connector.stats.host_hit_blocks if self.connector else 0
        deadline = t0 + self.config.timeout_s
        count_preemptions(self.engine, counters)
        while pending or driver.live:
            while pending and len(driver.live) < self.config.concurrency:
                driver.start(pending.popleft())
            if time.perf_counter() > deadline:
                raise TimeoutError(f"replay {label!r} exceeded {self.config.timeout_s} s")
            for out in self._step(counters):
                if not out.finished:
                    continue
                tokens = tuple(out.outputs[0].token_ids)
                outcome = RequestOutcome(
                    out.request_id,
                    len(out.prompt_token_ids or ()),
                    out.num_cached_tokens or 0,
                    tokens,
                )
                requests.append(outcome)
                counters.prompt_tokens += outcome.prompt_tokens
                counters.cached_tokens += outcome.cached_tokens
                next_round = driver.finish(out.request_id, StepOutcome(len(tokens)))
                if next_round is not None:
                    driver.start_round(next_round)
        if self.connector is not None:
            counters.host_hit_blocks = self.connector.stats.host_hit_blocks - host_before
        return ReplayResult(
            tuple(driver.done),
            tuple(requests),
            counters,
            time.perf_counter() - t0,
            counters.summary(),
            cpu_s=time.process_time() - cpu0,
        )

    def _step(self, counters: VllmCounters) -> list[Any]:
        log = self.connector.step_log if self.connector is not None else None
        logged = len(log) if log is not None else 0
        step_t0, step_cpu0 = time.perf_counter(), time.process_time()
        outputs = self.engine.step()
        step_s, step_cpu_s = time.perf_counter() - step_t0, time.process_time() - step_cpu0
        counters.engine_step_s += step_s
        counters.engine_step_cpu_s += step_cpu_s
        counters.steps += 1
        if log is not None and len(log) == logged + 1:
            counters.iterations.append((step_s, step_cpu_s, *log[-1]))
        return outputs

    def _submit(self, request_id: str, wf: Workflow, step_index: int) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        step = wf.steps[step_index]
        params = SamplingParams(
            max_tokens=max(1, min(step.output_tokens, self.config.max_output_tokens)),
            temperature=0.0,
            ignore_eos=True,
            extra_args=make_extra_args(wf.workflow_id, step.agent, wf.tenant),
        )
        prompt = prompt_token_ids(wf, step_index, self.config.vocab_size)
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt), params)


def count_preemptions(engine: Any, counters: VllmCounters) -> None:
    """Count in ``counters.preemptions`` every running request the in-process scheduler
    preempts (vLLM's ``Scheduler._preempt_request``: blocks freed, prompt recomputed later);
    nothing when the engine core runs in another process."""
    core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
    scheduler = getattr(core, "scheduler", None)
    preempt = getattr(scheduler, "_preempt_request", None)
    if preempt is None:
        return

    def counted(*args: Any, **kwargs: Any) -> Any:
        counters.preemptions += 1
        return preempt(*args, **kwargs)

    scheduler._preempt_request = counted
