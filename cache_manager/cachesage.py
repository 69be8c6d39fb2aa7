"""CacheSage's KV policy (arXiv 2605.27744, "A Policy-Driven Runtime Layer for Agentic LLM
Serving"): an agent-transition matrix learned online, per app, from the steps the runtime
observes; a block survives by the probability that one of its agents is called within the
horizon; the agents likely next are prefetched between steps. See ``policies.py`` for the
contract every policy keeps.

What is modelled (the paper's KV-caching policy; its other eight policies are not KV policies):

* **Online transition matrix.** Per app, counts of ``previous agent -> next agent`` over every
  finished step of every workflow (a workflow's first step counts from ``START``). Nothing is
  trained offline; a new app starts empty. Parallel rounds are flattened into step order.
* **Survival-based eviction.** For a running workflow whose last step ran agent ``c``, the
  probability that agent ``a`` is called within ``h`` steps is the first-passage probability
  of the Markov chain from ``c`` to ``a`` in ``h`` steps. A block's value is the probability
  that any of its consumers calls it within ``horizon`` steps (``1 - prod(1 - p)``), lowest
  evicted first, LRU among equals; blocks of finished workflows go first.
* **Between-step prefetch.** A CPU-only block whose consumers call it within ``load_ahead``
  steps with probability ``>= min_prefetch_p`` is prefetched; every evicted block is written
  back to the host tier (the same two-tier engine as ``lru-offload``).

Unlike pbkv there is no offline history, no live-context features, no confidence bound and no
cost model: the figures are the matrix's point estimates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pbkv.cache_manager.checks import check_ints, check_numbers
from pbkv.cache_manager.policies import (
    BlockFacts,
    Policy,
    Rank,
    WorkflowView,
    transitions_since,
)
from pbkv.cache_manager.scorer import Outlook, any_reuse

START = "\x00start"  # the row of a workflow's first step
MAX_AGENTS_PER_APP = 256  # matrix rows and columns per app (agents beyond it are not learned)


@dataclass(frozen=True, slots=True)
class CachesagePolicyConfig:
    load_ahead: int = 1  # prefetch blocks of agents called within this many steps
    min_prefetch_p: float = 0.5  # P(called within load_ahead) a prefetch needs

    def __post_init__(self) -> None:
        check_ints(self, {"load_ahead": 1})
        check_numbers(self, ("min_prefetch_p",), 0.0, 1.0)


class TransitionMatrix:
    """Counts of ``previous -> next`` agent for one app, and first-passage probabilities."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(dict)
        self.agents: dict[str, None] = {}  # insertion-ordered
        self.version = 0
        self._cache: dict[tuple[str, int], dict[str, tuple[float, ...]]] = {}

    def observe(self, previous: str, agent: str) -> None:
        if agent not in self.agents:
            if len(self.agents) >= MAX_AGENTS_PER_APP:
                return
            self.agents[agent] = None
        row = self.counts[previous]
        row[agent] = row.get(agent, 0) + 1
        self.version += 1
        self._cache.clear()

    def next_distribution(self, current: str) -> dict[str, float]:
        row = self.counts.get(current)
        if not row:
            return {}
        total = sum(row.values())
        return {a: n / total for a, n in row.items()}

    def first_passage(self, current: str, steps: int) -> dict[str, tuple[float, ...]]:
        """``{agent: (P(called within 1 step), ..., P(called within steps))}`` from
        ``current``, for every agent reachable in ``steps`` steps."""
        key = (current, steps)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        out: dict[str, tuple[float, ...]] = {}
        start = self.next_distribution(current)
        for target in self.agents:
            # Mass not yet absorbed at ``target``, by the agent it sits at.
            free = {a: p for a, p in start.items() if a != target}
            hit = start.get(target, 0.0)
            within = [hit]
            for _ in range(steps - 1):
                nxt: dict[str, float] = {}
                for a, p in free.items():
                    for b, q in self.next_distribution(a).items():
                        if b == target:
                            hit += p * q
                        else:
                            nxt[b] = nxt.get(b, 0.0) + p * q
                free = nxt
                within.append(hit)
            if hit > 0.0:
                out[target] = tuple(within)
        self._cache[key] = out
        return out


class CachesagePolicy(Policy):
    """CacheSage: online transition matrix, survival-based eviction, between-step prefetch."""

    name = "cachesage"
    offload_unnamed = True

    def __init__(self, config: CachesagePolicyConfig | None = None, *, horizon: int) -> None:
        config = config or CachesagePolicyConfig()
        self.horizon = max(1, horizon)
        self.load_ahead = config.load_ahead
        self.min_prefetch_p = config.min_prefetch_p
        self.matrices: dict[str, TransitionMatrix] = defaultdict(TransitionMatrix)
        self._counted: dict[str, int] = {}  # workflow id -> its steps already in the matrix

    def _learn(self, wf: WorkflowView) -> str:
        """Count ``wf``'s steps not yet counted; returns the agent of its last finished step."""
        state = wf.state
        matrix = self.matrices[wf.app]
        for prev, step in transitions_since(state, self._counted.get(wf.workflow_id, 0)):
            matrix.observe(START if prev is None else prev.agent, step.agent)
        self._counted[wf.workflow_id] = state.step_index
        return state.steps[-1].agent if state.steps else START

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        current = self._learn(wf)
        steps = max(self.horizon, self.load_ahead)
        out: dict[str, Outlook] = {}
        for agent, within in self.matrices[wf.app].first_passage(current, steps).items():
            p = within[self.horizon - 1]
            firsts = [b - a for a, b in zip((0.0, *within), within, strict=False)]
            eta = sum((k + 1) * f for k, f in enumerate(firsts[: self.horizon])) / p if p else None
            out[agent] = Outlook(p, eta, 1.0, within[self.load_ahead - 1])
        for agent in wf.running:
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0)
        return out

    def workflow_ended(self, wf: WorkflowView) -> None:
        self._learn(wf)
        self._counted.pop(wf.workflow_id, None)

    def rank(self, facts: BlockFacts) -> Rank | None:
        if facts.dead:
            return Rank(-1.0, offload=False)
        p = any_reuse(o.p for o in facts.outlooks)
        soon = any_reuse(o.p_soon for o in facts.outlooks)
        return Rank(p, None, prefetch=soon >= self.min_prefetch_p, offload=True)
