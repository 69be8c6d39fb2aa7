"""Workflow trace format v1: the one record every part of pbkv reads.

A trace file is JSON Lines, one workflow per line (see ``docs/trace-format.md`` and
``docs/trace-format.schema.json``). In memory a workflow is a frozen ``Workflow``; parsing,
validation and the bounded reader live in ``training/trace_io/``.

Prompt composition
------------------
Each step's prompt is an ordered list of ``Segment``s. A segment names reusable content by id
and says how many tokens of it the prompt holds::

    step 3 of workflow w1, agent "Programmer":
    | system:Programmer (900) | preamble:chatdev (150) | history:w1 (2400) | new (120) |
    '------ same tokens in every workflow of the app ---'--- grows in w1 ---'- unique -'

Content is materialised as a deterministic token stream per *content key* (``content_key``):
the first ``n`` tokens of a stream are always the same, so two prompts share exactly the KV
blocks where their segments (and everything before them) agree. Scopes:

    id prefix       scope          meaning
    system:<agent>  app            the agent's fixed system prompt
    preamble:<name> app            a prompt part shared by all agents of the app
    history:<name>  workflow       the workflow's shared, growing context (prefix of a stream)
    new             workflow+step  tokens seen once (the new user message, tool output, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = "pbkv.trace.v1"

SEGMENT_KINDS = ("system", "preamble", "history", "new")


@dataclass(frozen=True, slots=True)
class Segment:
    """``tokens`` tokens of the content named ``id`` (``kind`` is the id's prefix)."""

    id: str
    tokens: int

    @property
    def kind(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def name(self) -> str:
        """The part after ``kind:`` (the agent for ``system:``); empty for ``new``."""
        return self.id.split(":", 1)[1] if ":" in self.id else ""


@dataclass(frozen=True, slots=True)
class Step:
    agent: str
    prompt: tuple[Segment, ...]
    output_tokens: int
    parallel_group: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    input_text: str | None = None
    output_text: str | None = None
    phase: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def input_tokens(self) -> int:
        return sum(s.tokens for s in self.prompt)


@dataclass(frozen=True, slots=True)
class Workflow:
    workflow_id: str
    app: str
    steps: tuple[Step, ...]
    tenant: str = "default"
    task: str = ""
    arrival_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(s.agent for s in self.steps)


def content_key(workflow: Workflow, step_index: int, seg_index: int) -> str:
    """The stream a segment's tokens come from (see the module docstring for scopes)."""
    seg = workflow.steps[step_index].prompt[seg_index]
    kind = seg.kind
    if kind in ("system", "preamble"):
        return f"{workflow.app}/{seg.id}"
    if kind == "history":
        return f"{workflow.tenant}/{workflow.workflow_id}/{seg.id}"
    return f"{workflow.tenant}/{workflow.workflow_id}/{step_index}/{seg_index}/{seg.id}"


def step_groups(workflow: Workflow) -> list[list[int]]:
    """Step indices grouped into scheduling rounds: consecutive steps that share a
    ``parallel_group`` fan out together; every other step is a round of its own."""
    rounds: list[list[int]] = []
    prev_group: str | None = None
    for i, step in enumerate(workflow.steps):
        if step.parallel_group is not None and step.parallel_group == prev_group:
            rounds[-1].append(i)
        else:
            rounds.append([i])
        prev_group = step.parallel_group
    return rounds


def to_dict(workflow: Workflow) -> dict[str, Any]:
    """The JSON object of one trace line (optional fields left out when unknown)."""
    out: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "workflow_id": workflow.workflow_id,
        "app": workflow.app,
        "tenant": workflow.tenant,
        "task": workflow.task,
    }
    if workflow.arrival_s is not None:
        out["arrival_s"] = workflow.arrival_s
    if workflow.meta:
        out["meta"] = workflow.meta
    out["steps"] = [_step_to_dict(s) for s in workflow.steps]
    return out


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": step.agent,
        "prompt": [{"id": s.id, "tokens": s.tokens} for s in step.prompt],
        "output_tokens": step.output_tokens,
    }
    for key in ("parallel_group", "start_s", "end_s", "input_text", "output_text", "phase"):
        value = getattr(step, key)
        if value is not None:
            out[key] = value
    if step.meta:
        out["meta"] = step.meta
    return out
