"""Replaying trace-format-v1 workflows through a real vLLM engine, pbkv in the loop.

A closed loop of ``concurrency`` workflows: each runs its rounds (``trace.step_groups``) one
after another; a round's steps go to the engine together; the next round is submitted when
the last step of the previous one finishes. Prompts are ``materialize.prompt_token_ids`` (the
same tokens the simulator sees), outputs are capped at ``max_output_tokens`` and forced to
their length with ``ignore_eos``. Orchestration events go to an in-process ``CacheManager``
(the same one the connector's ``ManagerLink`` reports to), so one process holds the whole
loop; a workflow's latency is its wall time from submission of its first round to the end of
its last.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pbkv.engine_adapter.vllm.tags import make_extra_args
from pbkv.predictor.forecast import ObservedStep
from pbkv.trace import Workflow, step_groups
from pbkv.training.materialize import prompt_token_ids


@dataclass(frozen=True, slots=True)
class ReplayConfig:
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
class WorkflowResult:
    workflow_id: str
    latency_s: float
    num_steps: int
    cpu_s: float = 0.0  # process CPU seconds consumed while the workflow was in flight


@dataclass(slots=True)
class ReplayResult:
    label: str
    workflows: list[WorkflowResult] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # process CPU seconds of the whole replay (all engine threads)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # GPU prefix hits plus host-tier loads (vLLM's num_cached_tokens)
    host_hit_blocks: int = 0
    requests: int = 0
    engine_step_s: float = 0.0  # wall seconds inside LLMEngine.step (the engine's own time)
    engine_step_cpu_s: float = 0.0  # process CPU seconds inside LLMEngine.step
    steps: int = 0
    outputs: dict[str, list[int]] = field(default_factory=dict)  # request id -> tokens
    # (step wall s, step CPU s, prefill chunks (new, ctx), decode contexts), when logged
    iterations: list[tuple[float, float, list[tuple[int, int]], list[int]]] = field(
        default_factory=list)

    @property
    def median_latency_s(self) -> float:
        return statistics.median(w.latency_s for w in self.workflows) if self.workflows else 0.0

    @property
    def mean_latency_s(self) -> float:
        return statistics.fmean(w.latency_s for w in self.workflows) if self.workflows else 0.0

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(w.cpu_s for w in self.workflows) if self.workflows else 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "workflows": len(self.workflows), "requests": self.requests,
                "wall_s": round(self.wall_s, 4),
                "median_latency_s": round(self.median_latency_s, 4),
                "mean_latency_s": round(self.mean_latency_s, 4),
                "median_cpu_s": round(self.median_cpu_s, 4),
                "mean_cpu_s": round(statistics.fmean(w.cpu_s for w in self.workflows), 4)
                if self.workflows else 0.0,
                "cpu_s": round(self.cpu_s, 4),
                "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "hit_rate": round(self.hit_rate, 4), "host_hit_blocks": self.host_hit_blocks,
                "engine_step_s": round(self.engine_step_s, 4),
                "engine_step_cpu_s": round(self.engine_step_cpu_s, 4), "steps": self.steps,
                "latencies_s": [round(w.latency_s, 4) for w in self.workflows]}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_workflow": [asdict(w) for w in self.workflows]}


@dataclass(slots=True)
class _Running:
    workflow: Workflow
    rounds: list[list[int]]
    next_round: int = 0
    outstanding: dict[str, int] = field(default_factory=dict)  # request id -> step index
    round_started_s: float = 0.0
    started_s: float = 0.0
    started_cpu_s: float = 0.0


class Replayer:
    """Drives ``llm.llm_engine`` (``add_request`` / ``step``); ``manager`` may be ``None``
    (stock vLLM: no orchestration events)."""

    def __init__(self, llm: Any, manager: Any | None, config: ReplayConfig,
                 connector: Any | None = None) -> None:
        self.llm = llm
        self.engine = llm.llm_engine
        self.manager = manager
        self.config = config
        self.connector = connector

    def run(self, workflows: list[Workflow], label: str = "") -> ReplayResult:
        result = ReplayResult(label)
        pending = deque(workflows)
        running: dict[str, _Running] = {}
        by_request: dict[str, str] = {}
        host_before = self.connector.stats.host_hit_blocks if self.connector else 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        deadline = t0 + self.config.timeout_s
        while pending or running:
            while pending and len(running) < self.config.concurrency:
                wf = pending.popleft()
                run = _Running(wf, step_groups(wf), started_s=time.perf_counter(),
                               started_cpu_s=time.process_time())
                running[wf.workflow_id] = run
                if self.manager is not None:
                    self.manager.start_workflow(wf.workflow_id, wf.app, tenant=wf.tenant,
                                                task=wf.task)
                self._submit_round(run, by_request, result)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"replay {label!r} exceeded {self.config.timeout_s} s")
            log = self.connector.step_log if self.connector is not None else None
            logged = len(log) if log is not None else 0
            step_t0, step_cpu0 = time.perf_counter(), time.process_time()
            outputs = self.engine.step()
            step_s, step_cpu_s = time.perf_counter() - step_t0, time.process_time() - step_cpu0
            result.engine_step_s += step_s
            result.engine_step_cpu_s += step_cpu_s
            result.steps += 1
            if log is not None and len(log) == logged + 1:
                result.iterations.append((step_s, step_cpu_s, *log[-1]))
            for out in outputs:
                if not out.finished:
                    continue
                req_id = out.request_id
                wid = by_request.pop(req_id)
                run = running[wid]
                result.prompt_tokens += len(out.prompt_token_ids or ())
                result.cached_tokens += out.num_cached_tokens or 0
                result.outputs[req_id] = list(out.outputs[0].token_ids)
                step_index = run.outstanding.pop(req_id)
                if self.manager is not None:
                    step = run.workflow.steps[step_index]
                    self.manager.step_finished(wid, ObservedStep(
                        agent=step.agent, parallel_group=step.parallel_group,
                        output_tokens=len(out.outputs[0].token_ids), phase=step.phase))
                if run.outstanding:
                    continue
                if run.next_round < len(run.rounds):
                    self._submit_round(run, by_request, result)
                    continue
                now = time.perf_counter()
                result.workflows.append(WorkflowResult(
                    wid, now - run.started_s, len(run.workflow.steps),
                    time.process_time() - run.started_cpu_s))
                del running[wid]
                if self.manager is not None:
                    self.manager.end_workflow(wid)
        result.wall_s = time.perf_counter() - t0
        result.cpu_s = time.process_time() - cpu0
        if self.connector is not None:
            result.host_hit_blocks = self.connector.stats.host_hit_blocks - host_before
        return result

    def _submit_round(self, run: _Running, by_request: dict[str, str],
                      result: ReplayResult) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        wf = run.workflow
        run.round_started_s = time.perf_counter()
        for step_index in run.rounds[run.next_round]:
            step = wf.steps[step_index]
            req_id = f"{wf.workflow_id}/{step_index}"
            if self.manager is not None:
                self.manager.step_started(wf.workflow_id, step.agent,
                                          parallel_group=step.parallel_group)
            params = SamplingParams(
                max_tokens=max(1, min(step.output_tokens, self.config.max_output_tokens)),
                temperature=0.0, ignore_eos=True,
                extra_args=make_extra_args(wf.workflow_id, step.agent, wf.tenant))
            prompt = prompt_token_ids(wf, step_index, self.config.vocab_size)
            self.engine.add_request(req_id, TokensPrompt(prompt_token_ids=prompt), params)
            run.outstanding[req_id] = step_index
            by_request[req_id] = wf.workflow_id
            result.requests += 1
        run.next_round += 1


class ServiceOrchestrator:
    """The replayer's orchestration calls sent to a running pbkv service (``PbkvClient``).

    Fail open like the engine: a call that fails (service restarting or gone) is counted and
    skipped, and the replay keeps serving."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.num_errors = 0

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:  # PbkvError (gRPC status) or a closed channel
            self.num_errors += 1
            return None

    def start_workflow(self, workflow_id: str, app: str, *, tenant: str = "default",
                       task: str = "") -> None:
        self._call(self.client.start_workflow, workflow_id, app, task=task)

    def step_started(self, workflow_id: str, agent: str, *,
                     parallel_group: str | None = None) -> None:
        self._call(self.client.step_started, workflow_id, agent, parallel_group=parallel_group)

    def step_finished(self, workflow_id: str, step: ObservedStep) -> Any:
        fields: dict[str, Any] = {"output_tokens": step.output_tokens}
        if step.parallel_group is not None:
            fields["parallel_group"] = step.parallel_group
        if step.phase is not None:
            fields["phase"] = step.phase
        return self._call(self.client.step_finished, workflow_id, step.agent, **fields)

    def end_workflow(self, workflow_id: str) -> None:
        self._call(self.client.end_workflow, workflow_id)
