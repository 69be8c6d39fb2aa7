"""Training examples cut from finished workflows: the state before each scheduling round and
the agents that round called.

A parallel fan-out group counts as one round (``trace.step_groups``); each of its agents is a
target of that round. The state holds only steps of earlier rounds, so nothing leaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pbkv.predictor.forecast import ObservedStep, WorkflowState
from pbkv.trace import Step, Workflow, step_groups


@dataclass(frozen=True, slots=True)
class Example:
    state: WorkflowState
    targets: tuple[str, ...]  # agents of the next round (several for a fan-out)


def observed(step: Step) -> ObservedStep:
    return ObservedStep(
        agent=step.agent,
        parallel_group=step.parallel_group,
        output_text=step.output_text,
        output_tokens=step.output_tokens,
        start_s=step.start_s,
        end_s=step.end_s,
        phase=step.phase,
    )


def state_at(workflow: Workflow, num_steps: int) -> WorkflowState:
    """The workflow as known after its first ``num_steps`` steps."""
    steps = tuple(observed(s) for s in workflow.steps[:num_steps])
    now_s = next((s.end_s for s in reversed(steps) if s.end_s is not None), workflow.arrival_s)
    return WorkflowState(
        workflow_id=workflow.workflow_id,
        app=workflow.app,
        task=workflow.task,
        tenant=workflow.tenant,
        steps=steps,
        started_s=workflow.arrival_s,
        now_s=now_s,
    )


def finished_state(workflow: Workflow) -> WorkflowState:
    return state_at(workflow, len(workflow.steps))


def examples(workflow: Workflow) -> Iterator[Example]:
    steps = tuple(observed(s) for s in workflow.steps)
    for group in step_groups(workflow):
        targets = tuple(workflow.steps[i].agent for i in group)
        prefix = steps[: group[0]]
        now_s = next((s.end_s for s in reversed(prefix) if s.end_s is not None), workflow.arrival_s)
        state = WorkflowState(
            workflow.workflow_id,
            workflow.app,
            workflow.task,
            workflow.tenant,
            prefix,
            workflow.arrival_s,
            now_s,
        )
        yield Example(state, targets)


def round_agents(state: WorkflowState) -> list[tuple[str, ...]]:
    """The state's steps grouped into rounds (same rule as ``trace.step_groups``)."""
    return list(state.rounds())


def round_token(agents: tuple[str, ...]) -> str:
    """One symbol per round for sequence models: a fan-out is its sorted agents."""
    return agents[0] if len(agents) == 1 else "+".join(sorted(agents))
