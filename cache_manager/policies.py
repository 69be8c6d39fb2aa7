"""Eviction / prefetch policies, registered by name. A policy only turns what is known about a
block into a priority; it never moves a block (the engine does) and keeps no block state (the
directory and the planner do).

Contract of ``Policy.rank(facts)`` -> ``Rank | None``:
  * ``None``: the policy has no opinion; the block is left unnamed and the engine orders it by
    LRU, after every ranked block (``plan_order.py``).
  * ``Rank(value, ...)``: lower ``value`` is evicted first and equal values go by LRU; ranked
    blocks go before unnamed ones and a prefetch may displace them (only for a block worth
    more: the planner checks values).
  * ``prefetch``: a CPU-only block the policy wants on the GPU for the coming step;
    ``offload``: a GPU block worth a CPU copy if it is about to be evicted.
``outlooks(wf)`` gives, per agent of a running workflow, the policy's view of that agent's next
call (``scorer.Outlook``); the manager caches it until the workflow's state changes.

    name         value (lower: evicted first)                    prefetch            offload
    lru          (none: engine LRU)                              no                  no
    lru-offload  (none: engine LRU)                              on hit (engine)     every evicted
    kvflow       -min steps-to-execution (cap                    due in <= 2 steps   every evicted
                 hold_step+1) over the agents using it
    pbkv         finished-only blocks -1, others                 conservative P(use  all but
                 the scorer's conservative value (>= 0)          within load_ahead)  finished
                                                                 >= min_prefetch_p
    oracle       -steps to next use (Belady)                     due <= load_ahead   used again
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

from pbkv.cache_manager.block_directory import Block
from pbkv.cache_manager.scorer import BlockScore, Outlook, Scorer, any_reuse
from pbkv.predictor.forecast import Forecast, WorkflowState
from pbkv.registry import Registry

if TYPE_CHECKING:
    from pbkv.trace import Workflow

FAR_STEPS = 1e6  # a use known to come, but not by any running workflow (oracle)


class WorkflowView(Protocol):
    """What a policy may read about a running workflow."""

    workflow_id: str
    app: str
    state: WorkflowState  # finished steps
    forecast: Forecast | None  # latest forecast after the last finished step
    running: dict[str, int]  # agent -> steps of it in flight
    running_group: str | None  # parallel group of the steps in flight


class BlockFacts(NamedTuple):
    block: Block
    start_token: int
    num_tokens: int
    chain_end_token: int  # end of the longest consumer prompt through this block
    outlooks: list[Outlook]  # active consumers (workflow and agent-group)
    dead: bool  # used only by finished workflows, shared by no agent group
    now_s: float
    num_consumers: int = 0  # (workflow, agent) pairs expected to extend it
    cpu_full: bool = False  # the engine's CPU tier is full (its LRU is dropping copies)


class Rank(NamedTuple):
    value: float
    eta_steps: float | None = None
    prefetch: bool = False
    offload: bool = False
    score: BlockScore | None = None  # the scorer's components (pbkv), for the dashboard


class Policy(ABC):
    name: ClassVar[str]
    names_blocks: ClassVar[bool] = True  # False: plans name no block (engine LRU)
    offload_unnamed: ClassVar[bool] = False  # write back every evicted block
    time_sensitive: ClassVar[bool] = False  # ranks drift with time (re-scored in sweeps)
    uses_predictor: ClassVar[bool] = False  # falls back to LRU when it is inaccurate

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        return {}

    def group_extra(self, app: str, agent: str) -> Outlook | None:
        """A use of an agent group's blocks by no running workflow (oracle only)."""
        return None

    def workflow_started(self, wf: WorkflowView) -> None:  # noqa: B027 - optional hook
        pass

    def blocks_to_refresh(self, wf: WorkflowView) -> Sequence[bytes]:
        """Blocks whose rank moved because ``wf`` advanced, beyond its consumers' prompts."""
        return ()

    def workflow_ended(self, wf: WorkflowView) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def rank(self, facts: BlockFacts) -> Rank | None: ...


def combine(outlooks: Sequence[Outlook]) -> Outlook | None:
    """Any of several consumers reusing a block counts; it is as urgent as the soonest."""
    if not outlooks:
        return None
    eta: float | None = None
    conf = 0.0
    for o in outlooks:
        if o.eta_steps is not None and (eta is None or o.eta_steps < eta):
            eta = o.eta_steps
        conf = max(conf, o.confidence)
    return Outlook(any_reuse(o.p for o in outlooks), eta, conf,
                   any_reuse(o.p_soon for o in outlooks))


POLICIES: Registry[Policy] = Registry("cache policy")


class LruPolicy(Policy):
    """vLLM's default prefix cache: the engine's own LRU; plans name nothing."""

    name = "lru"
    names_blocks = False

    def rank(self, facts: BlockFacts) -> Rank | None:
        return None


class LruOffloadPolicy(LruPolicy):
    """SGLang's hierarchical cache: LRU, every evicted GPU block written back to the CPU, a
    CPU hit loaded back (the engine does that on lookup)."""

    name = "lru-offload"
    offload_unnamed = True


class PbkvPolicy(Policy):
    """This project: the scorer's conservative reuse value (see ``scorer.py``)."""

    name = "pbkv"
    time_sensitive = True
    uses_predictor = True

    def __init__(self, scorer: Scorer, *, horizon: int, load_ahead: int,
                 min_prefetch_p: float, min_offload_p: float = 0.0) -> None:
        self.scorer = scorer
        self.horizon = horizon
        self.load_ahead = load_ahead
        self.min_prefetch_p = min_prefetch_p
        self.min_offload_p = min_offload_p

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        out: dict[str, Outlook] = {}
        fc = wf.forecast
        lb = self.scorer.lower_bound
        if fc is not None:
            h = min(self.horizon, fc.horizon) - 1
            soon = min(self.load_ahead, fc.horizon) - 1
            for a in fc.agents:
                p = a.p_within[h] if h >= 0 else 0.0
                p_soon = a.p_within[soon] if soon >= 0 else 0.0
                out[a.agent] = Outlook(lb(p, fc.confidence), a.eta_steps, fc.confidence,
                                       lb(p_soon, fc.confidence))
        for agent in wf.running:
            # In flight: its next prompt extends this one.
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0)
        return out

    def rank(self, facts: BlockFacts) -> Rank | None:
        b = facts.block
        if facts.dead:
            return Rank(-1.0)  # finished workflows' blocks first, by LRU
        age = None if b.last_access_s is None else facts.now_s - b.last_access_s
        # A CPU copy is worth only a reload while the CPU tier has room; once it is full, the
        # engine's CPU LRU may drop the copy before it is used, so the GPU copy is valued at
        # the full recompute cost (conservative).
        s = self.scorer.score(facts.outlooks, start_token=facts.start_token,
                              num_tokens=facts.num_tokens, chain_end_token=facts.chain_end_token,
                              on_cpu=b.on_cpu and not facts.cpu_full, age_s=age,
                              block_hash=b.block_hash, consumers=facts.num_consumers)
        # Every live block is ranked (value >= 0): the whole eviction order follows value, and
        # a prefetch may displace only a block worth less (the planner checks values).
        return Rank(s.score, s.eta_steps,
                    prefetch=any_reuse(o.p_soon for o in facts.outlooks) >= self.min_prefetch_p,
                    offload=not facts.cpu_full or s.p_reuse >= self.min_offload_p, score=s)


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

    def __init__(self, *, hold_step: int, load_ahead_step: int) -> None:
        self.hold_step = hold_step
        self.load_ahead_step = load_ahead_step
        self.graphs: dict[str, list[frozenset[str]]] = {}  # app -> rounds of its first run

    def workflow_ended(self, wf: WorkflowView) -> None:
        if wf.app not in self.graphs and wf.state.steps:
            self.graphs[wf.app] = [frozenset(r) for r in observed_rounds(wf.state)]

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        out: dict[str, Outlook] = {}
        graph = self.graphs.get(wf.app)
        if graph is not None:
            pos = rounds_started(wf)
            for i, agents in enumerate(graph[pos:pos + self.hold_step + 1]):
                for a in agents:
                    out.setdefault(a, Outlook(1.0, float(i + 1), 1.0))
        for agent in wf.running:
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0)
        return out

    def rank(self, facts: BlockFacts) -> Rank | None:
        cap = float(self.hold_step + 1)
        ste = min((o.eta_steps for o in facts.outlooks if o.eta_steps is not None),
                  default=cap)
        ste = min(ste, cap)
        # An agent with no known schedule (at the cap) is never prefetched.
        return Rank(-ste, ste, prefetch=ste <= self.load_ahead_step and ste < cap,
                    offload=True)


class OraclePolicy(Policy):
    """Belady with perfect prefetch (the limit): it reads every workflow's real future
    (``set_future``) and evicts the block whose next use is farthest; blocks never used again
    go first; blocks due within ``load_ahead`` steps are prefetched.

    With ``prompt_blocks`` (the block hashes of each future step's prompt) the next use is
    exact per block; without it, per agent (a block is next used when an agent whose last
    prompt holds it is next called). Distances are in steps of the using workflow (running
    workflows advance side by side); a workflow not yet started is expected to start after
    about (k + 1) / running * mean workflow length steps when it is the k-th one waiting
    (workflows start in the order given, one each time a running one finishes)."""

    name = "oracle"
    time_sensitive = True  # waiting workflows' estimated starts drift
    lookahead_workflows = 64
    refresh_steps = 4  # steps ahead whose prompts are re-ranked when a workflow advances

    def __init__(self, *, load_ahead: int, offload_steps: float = math.inf) -> None:
        self.load_ahead = load_ahead
        self.offload_steps = offload_steps
        self.futures: dict[str, tuple[str, ...]] = {}
        self._apps: dict[str, str] = {}
        self._pending: list[str] = []  # not yet started, in start order
        self._started: set[str] = set()
        self._position: dict[str, int] = {}  # running workflow -> steps started
        self._running = 0
        self._mean_len = 1.0
        self._prompts: dict[str, list[tuple[bytes, ...]]] = {}
        self._uses: dict[bytes, dict[str, list[int]]] = {}  # block -> workflow -> steps

    def set_future(self, workflows: Sequence[Workflow],
                   prompt_blocks: Callable[[Workflow, int], Sequence[bytes]] | None = None
                   ) -> None:
        self.futures = {wf.workflow_id: wf.agents for wf in workflows}
        self._apps = {wf.workflow_id: wf.app for wf in workflows}
        self._pending = [wf.workflow_id for wf in workflows
                         if wf.workflow_id not in self._started]
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
        for blocks in prompts[start:start + self.refresh_steps]:
            out.extend(blocks)
        return out

    def group_extra(self, app: str, agent: str) -> Outlook | None:
        per_start = self._mean_len / max(self._running, 1)
        for k, wid in enumerate(self._pending[:self.lookahead_workflows]):
            if self._apps[wid] != app:
                continue
            agents = self.futures[wid]
            if agent in agents:
                return Outlook(1.0, (k + 1) * per_start + agents.index(agent) + 1, 1.0)
        if any(self._apps[w] == app and agent in self.futures[w]
               for w in self._pending[self.lookahead_workflows:]):
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
            eta = min((o.eta_steps for o in facts.outlooks if o.eta_steps is not None),
                      default=None)
        if eta is None:
            return Rank(-math.inf)
        # Once the CPU tier is full (it is the engine's LRU), copies of far-off blocks would
        # push out nearer ones before they are used: only blocks due soon get a copy.
        return Rank(-eta, eta, prefetch=eta <= self.load_ahead,
                    offload=not facts.cpu_full or eta <= self.offload_steps)


def observed_rounds(state: WorkflowState) -> list[tuple[str, ...]]:
    """Finished steps grouped into rounds (consecutive steps of one parallel group)."""
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
    """Rounds finished, plus the running one unless it extends the last finished round."""
    n = len(observed_rounds(wf.state))
    if wf.running:
        steps = wf.state.steps
        joins = (bool(steps) and wf.running_group is not None
                 and steps[-1].parallel_group == wf.running_group)
        n += 0 if joins else 1
    return n


@POLICIES.register("lru")
def _lru(config) -> Policy:
    return LruPolicy()


@POLICIES.register("lru-offload")
def _lru_offload(config) -> Policy:
    return LruOffloadPolicy()


@POLICIES.register("pbkv")
def _pbkv(config) -> Policy:
    return PbkvPolicy(Scorer(config.scorer), horizon=config.horizon,
                      load_ahead=config.load_ahead, min_prefetch_p=config.min_prefetch_p,
                      min_offload_p=config.min_offload_p)


@POLICIES.register("kvflow")
def _kvflow(config) -> Policy:
    return KvflowPolicy(hold_step=config.kvflow_hold_step,
                        load_ahead_step=config.kvflow_load_ahead_step)


@POLICIES.register("oracle")
def _oracle(config) -> Policy:
    return OraclePolicy(load_ahead=config.load_ahead, offload_steps=config.oracle_offload_steps)


from pbkv.cache_manager import baselines as _baselines  # noqa: E402,F401 - registers them
