"""Running requests in the shadow's pools: what each holds, and when it lets go.

The KV events say when a request's blocks were stored, not when the request finished; vLLM
keeps a running request's blocks out of eviction until then. The shadow learns the end from
the orchestrator instead: a request tagged ``<workflow>#<agent>`` holds its blocks in both
pools until that workflow reports a finished step of that agent (``step_finished``), ends, or
``max_hold_batches`` event batches went by. An untagged request, or one whose workflow the
manager does not know, lets go at once (as if it finished in the step that stored it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pbkv.engine_adapter.shadow.counts import PoolFigures


@dataclass(frozen=True, slots=True)
class Hold:
    rid: str
    workflow: str | None
    agent: str | None
    steps_done: int  # the workflow's finished steps when the request started
    batch: int  # the batch it started in
    lru: tuple[tuple[bytes, ...], int]  # (held blocks, uncached slots) in the LRU pool
    plan: tuple[tuple[bytes, ...], int]  # the same in the plan pool
    started: bool  # the manager accepted its RequestStarted (so it gets a RequestFinished)
    lone: bool = False  # a lone reuse report: the engine computed nothing for it
    figures: tuple[PoolFigures, ...] = ()  # what it added to the LRU and plan pools' tallies


def steps_done(manager, workflow: str | None) -> int | None:
    """The workflow's finished steps, or None when it is not running."""
    if workflow is None or not manager.has_workflow(workflow):
        return None
    return manager.workflow_state(workflow).step_index


def finished(manager, hold: Hold, batch: int, max_hold_batches: int) -> bool:
    """Whether ``hold``'s request is over (see the module docstring)."""
    if batch - hold.batch > max_hold_batches:
        return True
    if hold.workflow is None or not manager.has_workflow(hold.workflow):
        return True
    state = manager.workflow_state(hold.workflow)
    new = state.step_index - hold.steps_done
    if new <= 0:
        return False
    if new > len(state.steps):  # more finished than the state's window shows
        return True
    return any(step.agent == hold.agent for step in state.steps[-new:])
