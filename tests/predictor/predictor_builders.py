"""Tiny trace builders for predictor tests (synthetic workloads come from pbkv.training.synth)."""

from __future__ import annotations

from pbkv.trace import Segment, Step, Workflow


def make_workflow(
    workflow_id: str,
    app: str,
    rounds: list[str | tuple[str, ...]],
    task: str = "",
    outputs: list[str] | None = None,
) -> Workflow:
    """``rounds``: an agent name per round, or a tuple of agents for a parallel fan-out."""
    steps: list[Step] = []
    t = 0.0
    for i, r in enumerate(rounds):
        agents = (r,) if isinstance(r, str) else r
        group = f"g{i}" if len(agents) > 1 else None
        for a in agents:
            text = outputs[i] if outputs and i < len(outputs) else None
            steps.append(
                Step(
                    agent=a,
                    prompt=(Segment(f"system:{a}", 32),),
                    output_tokens=8,
                    parallel_group=group,
                    start_s=t,
                    end_s=t + 1.0,
                    output_text=text,
                )
            )
        t += 1.0
    return Workflow(workflow_id=workflow_id, app=app, steps=tuple(steps), task=task, arrival_s=0.0)
