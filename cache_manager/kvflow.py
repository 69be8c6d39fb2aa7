"""KVFlow's policy: steps-to-execution from the app's static agent step graph (see
``policies.py`` for the contract every policy keeps)."""

from __future__ import annotations

from dataclasses import dataclass

from pbkv.cache_manager.checks import check_ints
from pbkv.cache_manager.policies import BlockFacts, Policy, Rank, WorkflowView
from pbkv.cache_manager.scorer import Outlook
from pbkv.predictor.forecast import WorkflowState


@dataclass(frozen=True, slots=True)
class KvflowPolicyConfig:
    hold_step: int = 3  # steps-to-execution is capped at hold_step + 1
    load_ahead_step: int = 2  # prefetch blocks of agents due within this many steps

    def __post_init__(self) -> None:
        check_ints(self, {"hold_step": 0, "load_ahead_step": 0})


class KvflowPolicy(Policy):
    """KVFlow (PanZaifeng/KVFlow, ``agent_manager.py`` / ``hiradix_cache.py``): each agent's
    steps-to-execution comes from the app's static agent step graph -- here the app's first
    finished run, as the ``static-graph`` predictor does. A block's value is the smallest
    steps-to-execution of the agents using it, capped at ``hold_step + 1`` (agents without a
    known schedule get the cap); eviction goes from the largest value down, LRU among equals;
    evicted GPU blocks are written back to the CPU; agents due within ``load_ahead_step`` are
    prefetched."""

    name = "kvflow"
    offload_unnamed = True

    def __init__(self, config: KvflowPolicyConfig | None = None) -> None:
        config = config or KvflowPolicyConfig()
        self.hold_step = config.hold_step
        self.load_ahead_step = config.load_ahead_step
        # app -> (index of its first known round, rounds of its first run from there on): a
        # first run longer than the state's step window is known from round ``rounds_before``.
        self.graphs: dict[str, tuple[int, list[frozenset[str]]]] = {}

    def workflow_ended(self, wf: WorkflowView) -> None:
        if wf.app not in self.graphs and wf.state.steps:
            self.graphs[wf.app] = (
                wf.state.rounds_before,
                [frozenset(r) for r in observed_rounds(wf.state)],
            )

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        out: dict[str, Outlook] = {}
        known = self.graphs.get(wf.app)
        if known is not None:
            first, graph = known
            pos = rounds_started(wf)
            for i in range(self.hold_step + 1):
                r = pos + i - first
                for a in graph[r] if 0 <= r < len(graph) else ():
                    out.setdefault(a, Outlook(1.0, float(i + 1), 1.0))
        for agent in wf.running:
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0)
        return out

    def rank(self, facts: BlockFacts) -> Rank | None:
        cap = float(self.hold_step + 1)
        ste = min((o.eta_steps for o in facts.outlooks if o.eta_steps is not None), default=cap)
        ste = min(ste, cap)
        # An agent with no known schedule (at the cap) is never prefetched.
        return Rank(-ste, ste, prefetch=ste <= self.load_ahead_step and ste < cap, offload=True)


def observed_rounds(state: WorkflowState) -> list[tuple[str, ...]]:
    """The state's finished steps (its window) grouped into rounds (consecutive steps of one
    parallel group)."""
    rounds: list[tuple[str, ...]] = []
    prev: str | None = None
    for s in state.steps:
        if s.parallel_group is not None and s.parallel_group == prev:
            rounds[-1] = (*rounds[-1], s.agent)
        else:
            rounds.append((s.agent,))
        prev = s.parallel_group
    return rounds


def rounds_started(wf: WorkflowView) -> int:
    """Rounds finished (all of them: ``rounds_before`` counts those older than the state's
    step window), plus the running one unless it extends the last finished round."""
    n = wf.state.rounds_before + len(observed_rounds(wf.state))
    if wf.running:
        steps = wf.state.steps
        joins = (
            bool(steps)
            and wf.running_group is not None
            and steps[-1].parallel_group == wf.running_group
        )
        n += 0 if joins else 1
    return n
