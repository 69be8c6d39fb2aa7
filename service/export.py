"""Finished workflows in a trace store -> trace format v1, so ``pbkv train`` retrains from
live traffic (``pbkv export-traces``).

A step's prompt is what the orchestrator reported in ``StepFinished.prompt`` (segments in
trace-format terms); when it reported none, the step gets one ``new`` segment of
``input_tokens`` tokens (or the tokenizer approximation of ``context_text``, at least 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pbkv.service.stores.base import EventRecord
from pbkv.trace import Segment, Step, Workflow
from pbkv.training.tokens import approx_tokens


def finished_workflows(events: Iterable[EventRecord], *, tenant: str | None = None
                       ) -> Iterator[Workflow]:
    """Workflows whose run ended, in order of their end, with at least one finished step."""
    runs: dict[tuple[str, str], list[EventRecord]] = {}
    for e in events:
        key = (e.tenant, e.workflow_id)
        if tenant is not None and e.tenant != tenant:
            continue
        if e.kind == "start":
            runs[key] = [e]
        elif key in runs:
            runs[key].append(e)
            if e.kind == "end":
                wf = _workflow(runs.pop(key))
                if wf is not None:
                    yield wf


def _workflow(run: list[EventRecord]) -> Workflow | None:
    start = run[0]
    steps = tuple(_step(e.payload) for e in run if e.kind == "step_finished")
    if not steps:
        return None
    arrival = start.payload.get("now_s")
    return Workflow(workflow_id=start.workflow_id, app=start.payload["app"], steps=steps,
                    tenant=start.tenant, task=start.payload.get("task", ""),
                    arrival_s=arrival if arrival is not None else start.at_s,
                    meta={"source": "pbkv-service", "first_event_seq": start.seq})


def _step(p: dict) -> Step:
    prompt = tuple(Segment(s["id"], int(s["tokens"])) for s in p.get("prompt") or ())
    if not prompt or sum(s.tokens for s in prompt) == 0:
        tokens = p.get("input_tokens") or approx_tokens(p.get("context_text") or "")
        prompt = (Segment("new", max(1, tokens)),)
    return Step(agent=p["agent"], prompt=prompt, output_tokens=int(p.get("output_tokens", 0)),
                parallel_group=p.get("parallel_group"), start_s=p.get("start_s"),
                end_s=p.get("end_s"), input_text=p.get("context_text") or None,
                output_text=p.get("output_text") or None, phase=p.get("phase"))
