"""Finished workflows in a trace store -> trace format v1, so ``pbkv train`` retrains from
live traffic (``pbkv export-traces``).

A step's prompt is what the orchestrator reported in ``StepFinished.prompt`` (segments in
trace-format terms); when it reported none, the step gets one ``new`` segment of
``input_tokens`` tokens (or the tokenizer approximation of ``context_text``, at least 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pbkv.service.records import EventRecord, StepFinished, WorkflowEnded, WorkflowStarted
from pbkv.trace import Segment, Step, Workflow
from pbkv.training.tokens import approx_tokens


def finished_workflows(
    records: Iterable[EventRecord], *, tenant: str | None = None
) -> Iterator[Workflow]:
    """Workflows whose run ended, in order of their end, with at least one finished step."""
    runs: dict[tuple[str, str], list[EventRecord]] = {}
    for r in records:
        key = (r.tenant, r.workflow_id)
        if tenant is not None and r.tenant != tenant:
            continue
        if isinstance(r.event, WorkflowStarted):
            runs[key] = [r]
        elif key in runs:
            runs[key].append(r)
            if isinstance(r.event, WorkflowEnded):
                wf = _workflow(runs.pop(key))
                if wf is not None:
                    yield wf


def _workflow(run: list[EventRecord]) -> Workflow | None:
    first = run[0]
    start = first.event
    assert isinstance(start, WorkflowStarted)
    steps = tuple(_step(r.event) for r in run if isinstance(r.event, StepFinished))
    if not steps:
        return None
    return Workflow(
        workflow_id=first.workflow_id,
        app=start.app,
        steps=steps,
        tenant=first.tenant,
        task=start.task,
        arrival_s=start.now_s if start.now_s is not None else first.at_s,
        meta={"source": "pbkv-service", "first_event_seq": first.seq},
    )


def _step(e: StepFinished) -> Step:
    prompt = tuple(Segment(p.id, p.tokens) for p in e.prompt)
    if not prompt or sum(s.tokens for s in prompt) == 0:
        tokens = e.input_tokens or approx_tokens(e.context_text)
        prompt = (Segment("new", max(1, tokens)),)
    return Step(
        agent=e.agent,
        prompt=prompt,
        output_tokens=e.output_tokens,
        parallel_group=e.parallel_group,
        start_s=e.start_s,
        end_s=e.end_s,
        input_text=e.context_text or None,
        output_text=e.output_text or None,
        phase=e.phase,
    )
