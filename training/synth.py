"""Synthetic workloads in trace format v1: ``synthesize(kind, seed, num_workflows, **knobs)``.

Two families (see ``docs/workloads.md``):

- ``static``: KVFlow's evaluation style. Each app is a fixed agent pipeline (4-8 agents by
  default) with large system prompts (1k-8k tokens); many workflows run concurrently (closed
  loop, 64 at a time by default).
- ``dynamic``: PBKV's style. Apps with routers, review loops, tool loops and fan-out whose path
  depends on the task text and earlier outputs (``synth_apps.py``).

Every step's prompt is, in this order (the order real frameworks build prompts in)::

    | system:<agent> | preamble:<app> | history:main            | new |
      fixed per agent  optional, app    sum of the contributions   this step's new tokens
      (app-scoped)     -wide            of all earlier rounds

A finished round contributes ``history_growth * (new + output tokens)`` of each of its steps
to the workflow's shared history; steps of one parallel group see the same history.

Times follow a simple cost model (documented, not measured): a step takes
``STEP_OVERHEAD_S + PREFILL_S_PER_TOKEN * input + DECODE_S_PER_TOKEN * output``; the next
round starts ``ROUND_GAP_S`` after the slowest step of the previous one. Arrivals are Poisson
(``rate_per_s``) or a closed loop of ``concurrency`` clients (a workflow starts when one of
the running ones ends).

Determinism: one ``random.Random(seed)`` draws everything in workflow order, so a seed gives
the same file on every machine, and the first k workflows of a larger run equal a run of k.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.synth_apps import (
    DYNAMIC_APPS,
    Plan,
    PlanKnobs,
    StaticPipeline,
    make_static_pipeline,
)

KINDS = ("static", "dynamic")
ARRIVALS = ("poisson", "closed")

# Cost model for plausible start/end times (a mid-size model on one GPU).
STEP_OVERHEAD_S = 0.02
PREFILL_S_PER_TOKEN = 5e-5
DECODE_S_PER_TOKEN = 0.02
ROUND_GAP_S = 0.05


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """All knobs of one synthetic run. Ranges are inclusive ``(low, high)`` token counts."""

    kind: str = "dynamic"
    seed: int = 0
    num_workflows: int = 1000
    num_apps: int = 4  # dynamic: the first N of DYNAMIC_APPS; static: N fixed pipelines
    system_tokens: tuple[int, int] = (300, 3000)
    preamble_tokens: int = 200  # 0: no preamble segment
    new_tokens: tuple[int, int] = (30, 150)
    output_tokens: tuple[int, int] = (30, 300)
    history_growth: float = 1.0  # 0: no shared history segment
    max_fanout: int = 4  # 1: no parallel groups
    pipeline_len: tuple[int, int] = (4, 8)  # static only
    max_loops: int = 4  # dynamic only
    noise: float = 0.05  # dynamic only
    arrival: str = "poisson"
    rate_per_s: float = 2.0  # poisson arrivals
    concurrency: int = 64  # closed loop
    num_tenants: int = 1
    # Tool / think pause before every round but the first, uniform in [low, high] seconds,
    # written into the steps' times (a replay honours it with ReplayConfig.trace_pauses).
    pause_s: tuple[float, float] = (0.0, 0.0)
    session_tasks: int = 1  # dynamic: tasks of one app chained into a session (one history)

    def __post_init__(self) -> None:
        _check(self.kind in KINDS, "kind", self.kind, f"one of {', '.join(KINDS)}")
        _check(self.arrival in ARRIVALS, "arrival", self.arrival, f"one of {', '.join(ARRIVALS)}")
        _check(self.num_workflows >= 0, "num_workflows", self.num_workflows, ">= 0")
        max_apps = len(DYNAMIC_APPS) if self.kind == "dynamic" else 1000
        _check(1 <= self.num_apps <= max_apps, "num_apps", self.num_apps, f"in 1..{max_apps}")
        _check_range("system_tokens", self.system_tokens, 1)
        _check_range("new_tokens", self.new_tokens, 1)
        _check_range("output_tokens", self.output_tokens, 1)
        _check_range("pipeline_len", self.pipeline_len, 1)
        _check(self.preamble_tokens >= 0, "preamble_tokens", self.preamble_tokens, ">= 0")
        _check(0 <= self.history_growth <= 10, "history_growth", self.history_growth, "in [0, 10]")
        _check(1 <= self.max_fanout <= 4, "max_fanout", self.max_fanout, "in 1..4")
        _check(self.max_loops >= 1, "max_loops", self.max_loops, ">= 1")
        _check(0 <= self.noise <= 0.5, "noise", self.noise, "in [0, 0.5]")
        _check(self.rate_per_s > 0, "rate_per_s", self.rate_per_s, "> 0")
        _check(self.concurrency >= 1, "concurrency", self.concurrency, ">= 1")
        _check(self.num_tenants >= 1, "num_tenants", self.num_tenants, ">= 1")
        p = self.pause_s
        _check(
            isinstance(p, tuple)
            and len(p) == 2
            and all(isinstance(v, int | float) for v in p)
            and 0 <= p[0] <= p[1] <= 3600,
            "pause_s",
            p,
            "a (low, high) pair of seconds with 0 <= low <= high <= 3600",
        )
        _check(1 <= self.session_tasks <= 100, "session_tasks", self.session_tasks, "in 1..100")


# Per-family defaults; any knob passed to ``synthesize`` overrides them.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "static": dict(
        num_apps=1,
        system_tokens=(1000, 8000),
        preamble_tokens=0,
        new_tokens=(50, 200),
        output_tokens=(50, 200),
        max_fanout=1,
        arrival="closed",
        concurrency=64,
    ),
    "dynamic": {},
}

# Named knob sets (``synthesize(..., preset=NAME)``, ``--synth preset=NAME``); other knobs
# override them. long-agent: long agent sessions that fill a full-size GPU (H100 80 GB with
# Llama-3-8B holds ~25k 16-token blocks): 5 tasks chained per session, ~30 rounds, tool results
# of 1.5k-4.5k tokens joining the history, so contexts grow to ~50k-150k tokens.
SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    "long-agent": dict(
        system_tokens=(4000, 8000),
        preamble_tokens=2000,
        new_tokens=(1500, 4500),
        output_tokens=(100, 400),
        session_tasks=5,
        max_fanout=2,
    ),
}

KNOBS = tuple(
    f.name for f in fields(SynthConfig) if f.name not in ("kind", "seed", "num_workflows")
)


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"synth knob {name}={value!r}: must be {expected}")


def _check_range(name: str, value: tuple[int, int], low: int) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
        and low <= value[0] <= value[1]
    )
    _check(ok, name, value, f"a (low, high) pair of ints with {low} <= low <= high")


def make_config(kind: str, seed: int, num_workflows: int, **knobs: Any) -> SynthConfig:
    """The validated config for ``kind`` with its defaults, overridden by ``knobs``."""
    preset = knobs.pop("preset", None)
    if preset is not None:
        if preset not in SYNTH_PRESETS:
            raise ValueError(f"unknown synth preset {preset!r}; known: {', '.join(SYNTH_PRESETS)}")
        knobs = {**SYNTH_PRESETS[preset], **knobs}
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown synth knob(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}")
    if kind not in KINDS:
        raise ValueError(f"synth kind {kind!r}: must be one of {', '.join(KINDS)}")
    merged = {**KIND_DEFAULTS[kind], **knobs}
    for name in ("system_tokens", "new_tokens", "output_tokens", "pipeline_len", "pause_s"):
        if isinstance(merged.get(name), list):
            merged[name] = tuple(merged[name])
    return SynthConfig(kind=kind, seed=seed, num_workflows=num_workflows, **merged)


def synthesize(kind: str, seed: int, num_workflows: int, **knobs: Any) -> list[Workflow]:
    """``num_workflows`` synthetic workflows of family ``kind``, deterministic for ``seed``.

    Knobs (all optional, see ``SynthConfig``): system_tokens, preamble_tokens, new_tokens,
    output_tokens, history_growth, max_fanout, pipeline_len, max_loops, noise, arrival,
    rate_per_s, concurrency, num_apps, num_tenants. Bad knobs raise ``ValueError`` naming them.
    """
    return list(iter_workflows(make_config(kind, seed, num_workflows, **knobs)))


def iter_workflows(config: SynthConfig) -> Iterator[Workflow]:
    """The workflows of ``config`` one by one, in arrival order."""
    return _Generator(config).run()


def _stable_int(*parts: object) -> int:
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class _Generator:
    """Turns app plans into steps with segments, sizes and times (the mechanism)."""

    def __init__(self, config: SynthConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.knobs = PlanKnobs(config.max_fanout, config.max_loops, config.noise)
        if config.kind == "static":
            # App structure comes from its own stream so it does not depend on num_workflows.
            app_rng = random.Random(_stable_int("static-apps", config.seed))
            self.pipelines = [
                make_static_pipeline(
                    app_rng, f"pipeline{i}", config.pipeline_len, config.max_fanout
                )
                for i in range(config.num_apps)
            ]
            self.app_names = [p.name for p in self.pipelines]
        else:
            self.app_names = list(DYNAMIC_APPS)[: config.num_apps]
        self._system: dict[tuple[str, str], Segment] = {}
        self._preamble = {
            app: Segment(f"preamble:{app}", config.preamble_tokens) for app in self.app_names
        }
        self._meta = {"synth": config.kind, "seed": config.seed, "arrival": config.arrival}
        if config.arrival == "closed":
            self._meta["concurrency"] = config.concurrency
        else:
            self._meta["rate_per_s"] = config.rate_per_s

    def system_segment(self, app: str, agent: str) -> Segment:
        """``system:<agent>``: one fixed length per (app, agent) for a seed."""
        key = (app, agent)
        seg = self._system.get(key)
        if seg is None:
            low, high = self.cfg.system_tokens
            size = low + _stable_int("system", self.cfg.seed, app, agent) % (high - low + 1)
            seg = self._system[key] = Segment(f"system:{agent}", size)
        return seg

    def pause(self, index: int, round_index: int) -> float:
        """The pause after round ``round_index`` of workflow ``index`` (its own stream, so
        the knob changes nothing else)."""
        low, high = self.cfg.pause_s
        if high <= 0:
            return 0.0
        u = _stable_int("pause", self.cfg.seed, index, round_index) / 2**64
        return round(low + (high - low) * u, 3)

    def run(self) -> Iterator[Workflow]:
        cfg, rng = self.cfg, self.rng
        free_at = [0.0] * min(cfg.concurrency, max(cfg.num_workflows, 1))  # closed-loop slots
        clock = 0.0
        for index in range(cfg.num_workflows):
            app_index = int(rng.random() * len(self.app_names))
            app = self.app_names[app_index]
            tenant = (
                "default"
                if cfg.num_tenants == 1
                else f"tenant{int(rng.random() * cfg.num_tenants)}"
            )
            if cfg.arrival == "poisson":
                clock += rng.expovariate(cfg.rate_per_s)
                arrival_s = clock
            else:
                arrival_s = heapq.heappop(free_at)
            if cfg.kind == "static":
                pipeline: StaticPipeline = self.pipelines[app_index]
                plan = Plan(f"job {index} for {app}", pipeline.rounds())
            else:
                plan = DYNAMIC_APPS[app](rng, self.knobs)
                for _ in range(cfg.session_tasks - 1):
                    more = DYNAMIC_APPS[app](rng, self.knobs)
                    plan = Plan(f"{plan.task}\n{more.task}", plan.rounds + more.rounds)
            workflow = self.build(index, app, tenant, plan, round(arrival_s, 6))
            if cfg.arrival == "closed":
                heapq.heappush(free_at, workflow.steps[-1].end_s)
            yield workflow

    def build(self, index: int, app: str, tenant: str, plan: Plan, arrival_s: float) -> Workflow:
        cfg, rng = self.cfg, self.rng
        new_lo, new_span = cfg.new_tokens[0], cfg.new_tokens[1] - cfg.new_tokens[0] + 1
        out_lo, out_span = cfg.output_tokens[0], cfg.output_tokens[1] - cfg.output_tokens[0] + 1
        preamble = self._preamble[app] if cfg.preamble_tokens else None
        history = 0
        now = arrival_s
        steps: list[Step] = []
        for round_index, calls in enumerate(plan.rounds):
            group = f"g{round_index}" if len(calls) > 1 else None
            head = [preamble] if preamble else []
            if history:
                head.append(Segment("history:main", history))
            round_end = now
            contribution = 0
            for call in calls:
                new = new_lo + int(rng.random() * new_span)
                out = out_lo + int(rng.random() * out_span)
                system = self.system_segment(app, call.agent)
                prompt = (system, *head, Segment("new", new))
                input_tokens = sum(s.tokens for s in prompt)
                end = now + (
                    STEP_OVERHEAD_S + PREFILL_S_PER_TOKEN * input_tokens + DECODE_S_PER_TOKEN * out
                )
                steps.append(
                    Step(
                        call.agent,
                        prompt,
                        out,
                        group,
                        round(now, 6),
                        round(end, 6),
                        None,
                        call.output_text,
                        call.phase,
                    )
                )
                round_end = max(round_end, end)
                contribution += new + out
            history += int(cfg.history_growth * contribution)
            now = round_end + ROUND_GAP_S + self.pause(index, round_index)
        return Workflow(
            f"{cfg.kind}-s{cfg.seed}-{index:06d}",
            app,
            tuple(steps),
            tenant,
            plan.task,
            arrival_s,
            dict(self._meta),
        )


def config_dict(config: SynthConfig) -> dict[str, Any]:
    """The config as plain JSON values (for benchmark and report headers)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
