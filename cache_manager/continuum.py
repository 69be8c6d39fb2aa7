"""Continuum's KV policy (arXiv 2511.02230, "Continuum: Efficient and Robust Multi-Turn LLM
Agent Scheduling with KV Cache Time-to-Live"; preview code Hanchenli/vllm-continuum): when an
agent's LLM call ends and its program pauses (a tool call, the orchestrator's think time), the
call's KV cache is pinned on the GPU for a time-to-live; when the TTL expires it is evictable
again. See ``policies.py`` for the contract every policy keeps.

What is modelled:

* **TTL pinning.** A block used by a workflow that has not ended is pinned until ``last use +
  TTL``; blocks used only by finished workflows go first. Eviction goes by the time the pin
  lapses, earliest first, so a block whose pin still holds goes only after every block whose
  pin has lapsed (anonymous blocks have a TTL of 0). The order is a fixed function of each
  block's last use, so it needs no re-scoring as time passes.
* **TTL per agent, from observed pauses.** Continuum picks a request's TTL from the duration
  distribution of the tool call it issued, trading the reload/recompute saved against the GPU
  memory held. Here the TTL of the agent whose call last used the block is the smallest pause
  covering ``ttl_quantile`` of the last ``pause_window`` pauses after that agent's steps (gap
  between a step's end and the workflow's next step start), capped at ``max_ttl_s``; every
  agent starts at ``default_ttl_s`` until ``min_pauses`` of its pauses have been seen.
* **Host tier.** Every evicted block is written back and a CPU hit is loaded back, as in
  ``lru-offload`` (the paper's "with CPU offloading"); nothing is prefetched.

Not modelled: Continuum's program-level first-come-first-serve scheduling (the engine's
scheduler is the simulator's, the same for every policy) and its per-request cost-benefit
TTL (a quantile of the agent's pauses instead). A pinned block here is evicted last, not held
against new requests as Continuum's scheduler may do.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from pbkv.cache_manager.checks import check_ints, check_numbers
from pbkv.cache_manager.policies import (
    BlockFacts,
    Policy,
    Rank,
    WorkflowView,
    transitions_since,
)
from pbkv.cache_manager.scorer import Outlook


@dataclass(frozen=True, slots=True)
class ContinuumPolicyConfig:
    ttl_quantile: float = 0.8  # share of observed pauses a pin should outlast
    default_ttl_s: float = 2.0  # the TTL until min_pauses pauses have been observed
    max_ttl_s: float = 30.0  # no pin lasts longer
    min_pauses: int = 8
    pause_window: int = 512  # the most recent pauses the TTL is chosen from

    def __post_init__(self) -> None:
        check_ints(self, {"min_pauses": 1, "pause_window": 1})
        check_numbers(self, ("ttl_quantile",), 0.0, 1.0)
        check_numbers(self, ("default_ttl_s", "max_ttl_s"), 0.0, float("inf"))


class PauseQuantile:
    """The ``quantile`` of a bounded window of pauses (``default`` until ``min_count``)."""

    def __init__(self, config: ContinuumPolicyConfig) -> None:
        self.config = config
        self.window: deque[float] = deque(maxlen=config.pause_window)
        self.sorted: list[float] = []
        self.ttl_s = config.default_ttl_s

    def add(self, pause_s: float) -> None:
        if len(self.window) == self.window.maxlen:
            del self.sorted[bisect.bisect_left(self.sorted, self.window[0])]
        self.window.append(pause_s)
        bisect.insort(self.sorted, pause_s)
        n = len(self.sorted)
        if n >= self.config.min_pauses:
            i = max(0, math.ceil(self.config.ttl_quantile * n) - 1)
            self.ttl_s = min(self.config.max_ttl_s, self.sorted[i])


MAX_AGENTS = 4_096  # agents with a TTL of their own (later ones share the default)


class ContinuumPolicy(Policy):
    """Continuum: pin a paused workflow's KV on the GPU for a TTL learned from its agent's
    pauses; evict by pin expiry."""

    name = "continuum"
    offload_unnamed = True

    def __init__(self, config: ContinuumPolicyConfig | None = None) -> None:
        self.config = config or ContinuumPolicyConfig()
        self.pauses: dict[str, PauseQuantile] = {}  # agent -> its pauses
        self._seen: dict[str, int] = {}  # workflow id -> its steps whose pause is counted

    def ttl_s(self, agent: str | None) -> float:
        q = self.pauses.get(agent) if agent is not None else None
        return self.config.default_ttl_s if q is None else q.ttl_s

    def add_pause(self, agent: str, pause_s: float) -> None:
        q = self.pauses.get(agent)
        if q is None:
            if len(self.pauses) >= MAX_AGENTS:
                return
            q = self.pauses[agent] = PauseQuantile(self.config)
        q.add(pause_s)

    def _observe(self, wf: WorkflowView) -> None:
        state = wf.state
        for prev, step in transitions_since(state, self._seen.get(wf.workflow_id, 0)):
            if prev is not None and prev.end_s is not None and step.start_s is not None:
                self.add_pause(prev.agent, max(0.0, step.start_s - prev.end_s))
        self._seen[wf.workflow_id] = state.step_index

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        self._observe(wf)
        return {agent: Outlook(1.0, 0.0, 1.0) for agent in wf.running}

    def workflow_ended(self, wf: WorkflowView) -> None:
        self._seen.pop(wf.workflow_id, None)

    def rank(self, facts: BlockFacts) -> Rank | None:
        if facts.dead:
            return Rank(-1.0, offload=False)
        b = facts.block
        last = b.last_access_s if b.last_access_s is not None else facts.now_s
        agent = next(reversed(b.users))[1] if b.users else None
        ttl = self.ttl_s(agent) if agent is not None else 0.0
        return Rank(last + ttl, offload=True)
