"""The ``clairvoyant`` policy (formerly ``oracle``, still accepted as a name): Belady on the
GPU tier with perfect prefetch, for evaluation only (see ``policies.py`` for the contract every
policy keeps). It is *not* a bound: the CPU tier stays the engine's LRU and distances are in
steps, not time, so other policies can beat it (``docs/simulator.md``); the strict lower bound
on latency is ``engine_adapter/sim/bound.py``."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pbkv.cache_manager.checks import check_ints, check_numbers
from pbkv.cache_manager.policies import BlockFacts, Policy, Rank, WorkflowView
from pbkv.cache_manager.scorer import Outlook

if TYPE_CHECKING:
    from pbkv.trace import Workflow

FAR_STEPS = 1e6  # a use known to come, but not by any running workflow


@dataclass(frozen=True, slots=True)
class OracleConfig:
    load_ahead: int = 1  # prefetch blocks due within this many steps
    offload_steps: float = 4.0  # once the CPU tier is full, CPU copies only of blocks due this soon

    def __post_init__(self) -> None:
        check_ints(self, {"load_ahead": 0})
        check_numbers(self, ("offload_steps",))


class ClairvoyantPolicy(Policy):
    """Belady with perfect prefetch (the limit): it reads every workflow's real future
    (``set_future``) and evicts the block whose next use is farthest; blocks never used again
    go first; blocks due within ``load_ahead`` steps are prefetched.

    With ``prompt_blocks`` (the block hashes of each future step's prompt) the next use is
    exact per block; without it, per agent (a block is next used when an agent whose last
    prompt holds it is next called). Distances are in steps of the using workflow (running
    workflows advance side by side); a workflow not yet started is expected to start after
    about (k + 1) / running * mean workflow length steps when it is the k-th one waiting
    (workflows start in the order given, one each time a running one finishes)."""

    name = "clairvoyant"
    time_sensitive = True  # waiting workflows' estimated starts drift
    lookahead_workflows = 64
    refresh_steps = 4  # steps ahead whose prompts are re-ranked when a workflow advances

    def __init__(self, config: OracleConfig | None = None) -> None:
        config = config or OracleConfig()
        self.load_ahead = config.load_ahead
        self.offload_steps = config.offload_steps
        self.futures: dict[str, tuple[str, ...]] = {}
        self._apps: dict[str, str] = {}
        self._pending: list[str] = []  # not yet started, in start order
        self._started: set[str] = set()
        self._position: dict[str, int] = {}  # running workflow -> steps started
        self._running = 0
        self._mean_len = 1.0
        self._prompts: dict[str, list[tuple[bytes, ...]]] = {}
        self._uses: dict[bytes, dict[str, list[int]]] = {}  # block -> workflow -> steps

    def set_future(
        self,
        workflows: Sequence[Workflow],
        prompt_blocks: Callable[[Workflow, int], Sequence[bytes]] | None = None,
    ) -> None:
        self.futures = {wf.workflow_id: wf.agents for wf in workflows}
        self._apps = {wf.workflow_id: wf.app for wf in workflows}
        self._pending = [wf.workflow_id for wf in workflows if wf.workflow_id not in self._started]
        lengths = [len(wf.steps) for wf in workflows]
        self._mean_len = max(1.0, sum(lengths) / len(lengths)) if lengths else 1.0
        self._prompts = {}
        self._uses = {}
        if prompt_blocks is None:
            return
        for wf in workflows:
            prompts = [tuple(prompt_blocks(wf, i)) for i in range(len(wf.steps))]
            self._prompts[wf.workflow_id] = prompts
            for i, blocks in enumerate(prompts):
                for h in blocks:
                    steps = self._uses.setdefault(h, {}).setdefault(wf.workflow_id, [])
                    if not steps or steps[-1] != i:
                        steps.append(i)

    def workflow_started(self, wf: WorkflowView) -> None:
        self._started.add(wf.workflow_id)
        self._running += 1
        if wf.workflow_id in self.futures:
            self._pending.remove(wf.workflow_id)

    def workflow_ended(self, wf: WorkflowView) -> None:
        self._running = max(self._running - 1, 0)
        self._position.pop(wf.workflow_id, None)

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        out: dict[str, Outlook] = {}
        start = wf.state.step_index + sum(wf.running.values())
        self._position[wf.workflow_id] = start
        future = self.futures.get(wf.workflow_id)
        if future is not None:
            for i, agent in enumerate(future[start:]):
                out.setdefault(agent, Outlook(1.0, float(i + 1), 1.0))
        for agent in wf.running:
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0)
        return out

    def blocks_to_refresh(self, wf: WorkflowView) -> Sequence[bytes]:
        prompts = self._prompts.get(wf.workflow_id)
        if not prompts:
            return ()
        start = max(wf.state.step_index + sum(wf.running.values()) - 1, 0)
        out: list[bytes] = []
        for blocks in prompts[start : start + self.refresh_steps]:
            out.extend(blocks)
        return out

    def group_extra(self, app: str, agent: str) -> Outlook | None:
        per_start = self._mean_len / max(self._running, 1)
        for k, wid in enumerate(self._pending[: self.lookahead_workflows]):
            if self._apps[wid] != app:
                continue
            agents = self.futures[wid]
            if agent in agents:
                return Outlook(1.0, (k + 1) * per_start + agents.index(agent) + 1, 1.0)
        if any(
            self._apps[w] == app and agent in self.futures[w]
            for w in self._pending[self.lookahead_workflows :]
        ):
            return Outlook(1.0, FAR_STEPS, 1.0)
        return None

    def _next_use(self, block_hash: bytes) -> float | None:
        uses = self._uses.get(block_hash)
        if not uses:
            return None
        best: float | None = None
        per_start = self._mean_len / max(self._running, 1)
        for wid, steps in uses.items():
            pos = self._position.get(wid)
            if pos is not None:  # running: its next use at or after the current position
                i = bisect_left(steps, pos)
                d = None if i == len(steps) else float(steps[i] - pos + 1)
            elif wid in self._started:
                continue  # finished
            else:
                try:
                    k = self._pending.index(wid, 0, self.lookahead_workflows)
                except ValueError:
                    d = FAR_STEPS
                else:
                    d = (k + 1) * per_start + steps[0] + 1
            if d is not None and (best is None or d < best):
                best = d
        return best

    def rank(self, facts: BlockFacts) -> Rank | None:
        if self._uses:
            eta = self._next_use(facts.block.block_hash)
        else:
            eta = min(
                (o.eta_steps for o in facts.outlooks if o.eta_steps is not None), default=None
            )
        if eta is None:
            return Rank(-math.inf)
        # Once the CPU tier is full (it is the engine's LRU), copies of far-off blocks would
        # push out nearer ones before they are used: only blocks due soon get a copy.
        return Rank(
            -eta,
            eta,
            prefetch=eta <= self.load_ahead,
            offload=not facts.cpu_full or eta <= self.offload_steps,
        )
