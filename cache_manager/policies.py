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
                 the scorer's conservative value (>= 0)          within load_ahead)  finished;
                                                                 >= min_prefetch_p   CPU full:
                                                                                     gated (*)
    pbkv-survival  pbkv with the scorer's survival value (``value_model="survival"``)
    pbkv-hostgate  pbkv with ``offload_gate="host"`` (the write-back gate (*) by host turnover)
    pbkv-unclaimed, -appaware, -appshared  pbkv with ``unclaimed_share`` "always", "idle-app",
                 "idle-app-shared" (a block no consumer claims: its own share; scorer.py)
    clairvoyant  -steps to next use (Belady)                     due <= load_ahead   used again
    (oracle: its former name, an alias; not a bound, see oracle.py)
    cachesage    P(called within horizon), online transition     P(use within        every evicted
                 matrix (finished-only -1)                       load_ahead)
                                                                 >= min_prefetch_p
    continuum    pin expiry: last use + its agent's TTL          no                  every evicted
                 (finished-only -1, anonymous TTL 0)

(*) Once the CPU tier is full, pbkv writes a block back only if its P >= ``min_offload_p``,
P of what by ``offload_gate``: "horizon", P(reuse within the forecast's horizon) (``p_eff``);
"host", P(reuse before the CPU tier would drop the copy): the tier's measured turnover
(``engines.ManagedEngine.host_survival_s``) in the consumer's steps, the forecast read past
its horizon while the workflow likely still runs (``scorer.reuse_p``), a lower bound
(``Outlook.p_host``). Like the survival value, it is read when a workflow's outlooks are.

Host drop order (``planner.host_plan_blocks`` > 0; ``Rank.host_value``, ``host_order``):
"chain" (default) places a CPU-only block a consumer claims at ``Scorer.context_score``, so
unlikely contexts leave whole, tail first, before a likely one's tail; else its GPU value.

``lru``, ``lru-offload`` and ``pbkv`` live here, the others in modules of their names
(``clairvoyant`` in ``oracle.py``, ``hicache`` and ``vllm-offload`` in ``baselines.py``); each
has its own config beside it, and its factory below receives only that
(``ManagerConfig.policy_config``) and the forecast horizon.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

from pbkv.cache_manager.block_directory import Block
from pbkv.cache_manager.checks import check_choice, check_ints, check_numbers, check_type
from pbkv.cache_manager.scorer import (
    BlockScore,
    Outlook,
    Scorer,
    ScorerConfig,
    any_reuse,
    combine,
    reuse_p,
    survival_p,
)
from pbkv.predictor.forecast import Forecast, ObservedStep, WorkflowState
from pbkv.registry import Registry

if TYPE_CHECKING:
    from pbkv.cache_manager.cachesage import CachesagePolicyConfig
    from pbkv.cache_manager.continuum import ContinuumPolicyConfig
    from pbkv.cache_manager.kvflow import KvflowPolicyConfig
    from pbkv.cache_manager.oracle import OracleConfig


class WorkflowView(Protocol):
    """What a policy may read about a running workflow."""

    workflow_id: str
    app: str
    state: WorkflowState  # finished steps
    forecast: Forecast | None  # latest forecast after the last finished step
    running: dict[str, int]  # agent -> steps of it in flight
    running_group: str | None  # parallel group of the steps in flight


def transitions_since(
    state: WorkflowState, done: int
) -> Iterator[tuple[ObservedStep | None, ObservedStep]]:
    """(previous step, step) for each finished step from index ``done`` on, as far as the
    state's window reaches: the workflow's first step has no previous one (``None``); a step
    whose previous one is older than the window is skipped."""
    first_kept = state.steps_before
    for i in range(max(done, first_kept), state.step_index):
        if i == 0:
            yield None, state.steps[0]
        elif i > first_kept:
            yield state.steps[i - 1 - first_kept], state.steps[i - first_kept]


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
    app_running: int = 0  # running workflows of the apps it may serve (unclaimed blocks only)
    shared_end_token: int | None = None  # end of its longest agent-group prefix (unclaimed)


class Rank(NamedTuple):
    value: float
    eta_steps: float | None = None
    prefetch: bool = False
    offload: bool = False
    score: BlockScore | None = None  # the scorer's components (pbkv), for the dashboard
    host_value: float | None = None  # a CPU-only block's place in the host drop order (None: value)


class Policy(ABC):
    name: ClassVar[str]
    names_blocks: ClassVar[bool] = True  # False: plans name no block (engine LRU)
    offload_unnamed: ClassVar[bool] = False  # write back every evicted block
    time_sensitive: ClassVar[bool] = False  # ranks drift with time (re-scored in sweeps)
    uses_predictor: ClassVar[bool] = False  # falls back to LRU when it is inaccurate
    orders_host_tier: ClassVar[bool] = False  # plans name CPU copies to drop first (pbkv)

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        return {}

    def group_extra(self, app: str, agent: str) -> Outlook | None:
        """A use of an agent group's blocks by no running workflow (oracle only)."""
        return None

    def workflow_started(self, wf: WorkflowView) -> None:  # noqa: B027 - optional hook
        pass

    def observe_survival(  # noqa: B027 - optional hook
        self, survival_s: float, host_survival_s: float = math.inf
    ) -> None:
        """How long a block the policy does not keep lasts in the engine's cache now, and a
        copy written to its CPU tier lasts there (``engines.Turnover``; ``inf`` while nothing
        leaves); read by later outlooks."""

    def blocks_to_refresh(self, wf: WorkflowView) -> Sequence[bytes]:
        """Blocks whose rank moved because ``wf`` advanced, beyond its consumers' prompts."""
        return ()

    def workflow_ended(self, wf: WorkflowView) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def rank(self, facts: BlockFacts) -> Rank | None: ...


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


OFFLOAD_GATES = ("horizon", "host")
HOST_ORDERS = ("chain", "value")


@dataclass(frozen=True, slots=True)
class PbkvPolicyConfig:
    load_ahead: int = 1  # prefetch blocks of agents due within this many steps
    min_prefetch_p: float = 0.5  # conservative P(reuse) a prefetch needs
    min_offload_p: float = 0.7  # P(reuse) a block needs for a CPU copy once the CPU tier is full
    offload_gate: str = "horizon"  # P of what: "horizon" (use within it), "host" (before dropped)
    host_order: str = "chain"  # host drops: "chain" (a claimed context whole) or "value"
    scorer: ScorerConfig = field(default_factory=ScorerConfig)

    def __post_init__(self) -> None:
        check_ints(self, {"load_ahead": 0})
        check_numbers(self, ("min_prefetch_p", "min_offload_p"), 0.0, 1.0)
        check_choice(self, "offload_gate", OFFLOAD_GATES)
        check_choice(self, "host_order", HOST_ORDERS)
        check_type(self, "scorer", ScorerConfig)


class PbkvPolicy(Policy):
    """This project: the scorer's conservative reuse value (see ``scorer.py``); outlooks over
    the forecast's first ``horizon`` steps."""

    name = "pbkv"
    time_sensitive = True
    uses_predictor = True
    orders_host_tier = True

    def __init__(self, config: PbkvPolicyConfig | None = None, *, horizon: int) -> None:
        config = config or PbkvPolicyConfig()
        self.scorer = Scorer(config.scorer)
        self.horizon = horizon
        self.load_ahead = config.load_ahead
        self.min_prefetch_p = config.min_prefetch_p
        self.min_offload_p = config.min_offload_p
        self.host_gate = config.offload_gate == "host"
        self.host_chain = config.host_order == "chain"
        self.survival = config.scorer.value_model == "survival"
        self.survival_s = math.inf
        self.host_survival_s = math.inf

    def observe_survival(self, survival_s: float, host_survival_s: float = math.inf) -> None:
        self.survival_s = survival_s
        self.host_survival_s = host_survival_s

    @staticmethod
    def _steps(wf: WorkflowView, seconds: float) -> float:
        """``seconds`` in steps of ``wf``: over the workflow's mean seconds per step so far
        (``inf``: ``seconds`` is, or the workflow has no pace yet)."""
        st = wf.state
        if math.isinf(seconds) or not st.step_index:
            return math.inf
        if st.now_s is None or st.started_s is None or st.now_s <= st.started_s:
            return math.inf
        return seconds * st.step_index / (st.now_s - st.started_s)

    def outlooks(self, wf: WorkflowView) -> dict[str, Outlook]:
        out: dict[str, Outlook] = {}
        fc = wf.forecast
        lb = self.scorer.lower_bound
        if fc is not None:
            h = min(self.horizon, fc.horizon) - 1
            soon = min(self.load_ahead, fc.horizon) - 1
            k = min(self._steps(wf, self.survival_s), h + 1) if self.survival else h + 1
            k_host = self._steps(wf, self.host_survival_s) if self.host_gate else 0.0
            conf = fc.confidence
            age = float(wf.state.step_index)
            for a in fc.agents:
                within = a.p_within[: h + 1] if h >= 0 else ()
                # P(its next use comes before the block would be evicted).
                p = survival_p(within, k)
                p_soon = a.p_within[soon] if soon >= 0 else 0.0
                # P(its next use comes before the CPU tier would drop a copy written now).
                p_host = reuse_p(within, k_host, age) if self.host_gate else 0.0
                out[a.agent] = Outlook(
                    lb(p, conf), a.eta_steps, conf, lb(p_soon, conf), lb(p_host, conf)
                )
        for agent in wf.running:
            # In flight: its next prompt extends this one.
            out[agent] = Outlook(1.0, 0.0, 1.0, 1.0, 1.0)
        return out

    def rank(self, facts: BlockFacts) -> Rank | None:
        b = facts.block
        if facts.dead:
            return Rank(-1.0)  # finished workflows' blocks first, by LRU
        age = None if b.last_access_s is None else facts.now_s - b.last_access_s
        # A CPU copy is worth only a reload while the CPU tier has room; once it is full, the
        # engine's CPU LRU may drop the copy before it is used, so the GPU copy is valued at
        # the full recompute cost (conservative).
        s = self.scorer.score(
            facts.outlooks,
            start_token=facts.start_token,
            num_tokens=facts.num_tokens,
            chain_end_token=facts.chain_end_token,
            on_cpu=b.on_cpu and not facts.cpu_full,
            age_s=age,
            block_hash=b.block_hash,
            consumers=facts.num_consumers,
            app_running=facts.app_running,
            shared_end_token=facts.shared_end_token,
        )
        # Every live block is ranked (value >= 0): the whole eviction order follows value, and
        # a prefetch may displace only a block worth less (the planner checks values).
        return Rank(
            s.score,
            s.eta_steps,
            prefetch=any_reuse(o.p_soon for o in facts.outlooks) >= self.min_prefetch_p,
            offload=not facts.cpu_full or self._offload_p(facts, s, age) >= self.min_offload_p,
            score=s,
            host_value=self._host_value(facts, age),
        )

    def _host_value(self, facts: BlockFacts, age_s: float | None) -> float | None:
        """A claimed CPU-only block's place in the host drop order under "chain" (module
        docstring); ``None``: its value."""
        b = facts.block
        if not (self.host_chain and facts.outlooks and b.on_cpu and not b.on_gpu):
            return None
        return self.scorer.context_score(
            facts.outlooks, chain_end_token=facts.chain_end_token, age_s=age_s
        )

    def _offload_p(self, facts: BlockFacts, s: BlockScore, age_s: float | None) -> float:
        """The P a CPU copy is judged by once the CPU tier is full: the block's P(reuse
        within the horizon) (gate "horizon"), or P(reuse before the tier would drop the copy)
        (gate "host"; ``Outlook.p_host``), trusted as far as the forecast's confidence."""
        if not self.host_gate:
            return s.p_reuse
        merged = combine(facts.outlooks)
        if merged is None:
            return self.scorer.effective_p(0.0, 0.0, age_s)
        return self.scorer.effective_p(merged.p_host, merged.confidence, age_s)


# Each factory gets its own section of the manager's config (``ManagerConfig.policy_config``;
# ``None`` for the LRU policies) and the forecast horizon.
@POLICIES.register("lru")
def _lru(config: None, horizon: int) -> Policy:
    return LruPolicy()


@POLICIES.register("lru-offload")
def _lru_offload(config: None, horizon: int) -> Policy:
    return LruOffloadPolicy()


@POLICIES.register("pbkv")
def _pbkv(config: PbkvPolicyConfig, horizon: int) -> Policy:
    return PbkvPolicy(config, horizon=horizon)


@POLICIES.register("pbkv-survival")
def _pbkv_survival(config: PbkvPolicyConfig, horizon: int) -> Policy:
    """pbkv with the survival value (``ScorerConfig.value_model="survival"``), to compare."""
    scorer = dataclasses.replace(config.scorer, value_model="survival")
    return PbkvPolicy(dataclasses.replace(config, scorer=scorer), horizon=horizon)


@POLICIES.register("pbkv-hostgate")
def _pbkv_hostgate(config: PbkvPolicyConfig, horizon: int) -> Policy:
    """pbkv with the write-back gate read at the host tier's turnover, to compare."""
    return PbkvPolicy(dataclasses.replace(config, offload_gate="host"), horizon=horizon)


# pbkv pricing a block no consumer claims by ``ScorerConfig.unclaimed_share``, to compare.
UNCLAIMED_VARIANTS = {
    "pbkv-unclaimed": "always",
    "pbkv-appaware": "idle-app",
    "pbkv-appshared": "idle-app-shared",
}


def _unclaimed_variant(mode: str, config: PbkvPolicyConfig, horizon: int) -> Policy:
    scorer = dataclasses.replace(config.scorer, unclaimed_share=mode)
    return PbkvPolicy(dataclasses.replace(config, scorer=scorer), horizon=horizon)


for _name, _mode in UNCLAIMED_VARIANTS.items():
    POLICIES.register(_name)(functools.partial(_unclaimed_variant, _mode))


@POLICIES.register("kvflow")
def _kvflow(config: KvflowPolicyConfig, horizon: int) -> Policy:
    from pbkv.cache_manager.kvflow import KvflowPolicy

    return KvflowPolicy(config)


@POLICIES.register("clairvoyant")
@POLICIES.register("oracle")  # its former name, kept so configs and scripts keep working
def _clairvoyant(config: OracleConfig, horizon: int) -> Policy:
    from pbkv.cache_manager.oracle import ClairvoyantPolicy

    return ClairvoyantPolicy(config)


@POLICIES.register("hicache")
def _hicache(config: None, horizon: int) -> Policy:
    from pbkv.cache_manager.baselines import HicachePolicy

    return HicachePolicy()


@POLICIES.register("vllm-offload")
def _vllm_offload(config: None, horizon: int) -> Policy:
    from pbkv.cache_manager.baselines import VllmOffloadPolicy

    return VllmOffloadPolicy()


@POLICIES.register("cachesage")
def _cachesage(config: CachesagePolicyConfig, horizon: int) -> Policy:
    from pbkv.cache_manager.cachesage import CachesagePolicy

    return CachesagePolicy(config, horizon=horizon)


@POLICIES.register("continuum")
def _continuum(config: ContinuumPolicyConfig, horizon: int) -> Policy:
    from pbkv.cache_manager.continuum import ContinuumPolicy

    return ContinuumPolicy(config)
