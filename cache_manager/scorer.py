"""Conservative reuse value of one cached block (pbkv's scorer; a small pure object).

Inputs per block: one ``Outlook`` per consumer (P(reused within the horizon), steps to its
next use, the forecast's confidence), where the block sits in the prompt, its tier and age.
The policy forms each outlook's ``p`` as a lower bound (``Scorer.lower_bound``: Wilson with
n = confidence * confidence_samples) rather than the point estimate. Two value models
(``ScorerConfig.value_model``), side by side:

``"survival"`` (issue 12 item 5; the policy ``pbkv-survival``; not the default, see below):
value = P(reused before it would be evicted) x (what keeping it saves)::

    p_pred   = 1 - prod_i (1 - p_i)                   any consumer reusing it (any_reuse)
               where p_i = P(consumer i's next use comes before the cache would evict the
               block): the policy reads the forecast's P(use within k steps) at k = the cache's
               survival time / the consumer's seconds per step (``survival_p``), so a reuse
               after the expected eviction counts as a miss
    eta      = min_i eta_i
    w        = min(1, max_i confidence_i / full_trust_confidence)
    p_eff    = w * p_pred + (1 - w) * 0.5 ** (age_s / recency_half_life_s)
    share_ms = recompute_ms(0, chain_end) * num_tokens / chain_end
                                    one consumer: the block's share of recomputing the
                                    longest prompt through it
             = recompute_ms(start, chain_end)
                                    shared by several consumers (an agent's system prompt
                                    across workflows, a parallel group's history): it and
                                    everything behind it, as "prefix" does (workflows yet
                                    to start reuse it too, which no forecast covers)
    saves_ms = reload_ms      with a CPU copy: keeping it on the GPU saves a load (a CPU-only
                              copy likewise: what a prefetch of it saves, so it displaces
                              only a GPU block worth less and the two never trade places)
             = share_ms       no CPU copy: keeping it saves recomputing it
    value    = p_eff * saves_ms / (1 + eta_weight * eta)

    Every private block of one prompt gets the same share, a parent at least its child's
    (a longer prompt through it; the per-token cost grows with position; a shared parent is
    priced at the whole tail), so eviction goes tail first (ties: deepest first) and a
    likely consumer's whole context outranks an unlikely one's head.

``"prefix"`` (the default: measured side by side, docs/cache-manager.md, "Value models side
by side", the survival value's median trails it at 2622 GPU / 2622 host blocks and on the
long-agent sessions, though it leads at 1311 / 1311 and in the long-agent seeds where this
one does worst)::

    p_pred   = 1 - prod_i (1 - p_i)                   p_i = P(use within the horizon)
    loss_ms  = reload_ms if a CPU copy exists else recompute_ms(start, chain_end)
    value    = p_eff * loss_ms / (1 + eta_weight * eta)

    ``recompute_ms(start, chain_end)`` is what a consumer pays if the block is gone: prefix
    caching stops at the first missing block, so it recomputes this block *and everything
    after it*. That ranks the head of an unlikely long context above the tail of a certain
    one, so under pressure every context is cut short from its tail.

``unclaimed_share`` (off by default): a block with no outlook (no running consumer: a
finished workflow's prompt that may be a system prompt, an agent group's prefix while no
workflow of its app runs) is valued by recency alone at full weight; under "prefix" that
recency times the whole tail behind it outranks a running workflow's own context at
concurrency 1 (docs/cache-manager.md, "Concurrency 1"). "always" (the policy
``pbkv-unclaimed``) prices every such block at its own share, as "survival" prices a private
block; "idle-app" (``pbkv-appaware``) only while no workflow of an app the block may serve
runs (``app_running`` = 0: the apps of its agent groups, confirmed or candidate, and of its
running users). A running workflow of the app may yet call the agent and read the prefix, and
with several running the tail pricing measured better (concurrency 16). "idle-app-shared"
(``pbkv-appshared``): as "idle-app", but a block of a confirmed agent group's shared prefix
(a system prompt) is priced at that prefix's tail (``shared_end_token``): what the app's next
workflow re-reads without it, not the longest history ever written behind it.

``context_score`` (the host tier's drop order under ``PbkvPolicyConfig.host_order`` "chain"):
a consumer's whole context as one unit, ``p_eff * recompute_ms(0, chain_end) / (1 + eta_weight
* eta)``, the same for every block of it. "prefix" prices a claimed context's tail at itself
alone, so a full host tier cut the last blocks of likely contexts (P 0.74-0.84) to keep the
heads of unlikely ones (docs/vllm-adapter.md, issue 12).

Per-token recompute cost: ``prefill_ms_per_token + attention_ms_per_token_ctx * position``
(grows with position); ``reload_ms`` is one block over the host link.

The result is a ``BlockScore``: the value and the components behind it, the one record the
dashboard's "top kept" list shows (``CacheManager.top_kept``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pbkv.cache_manager.checks import check_choice


class Outlook(NamedTuple):
    """One consumer's view of its next use of a block."""

    p: float  # P(used within the horizon)
    eta_steps: float | None  # expected steps to that use; None: not within the horizon
    confidence: float  # how far to trust ``p`` (forecast confidence), in [0, 1]
    p_soon: float = 0.0  # P(used within the policy's load-ahead steps): prefetch worthiness
    p_host: float = 0.0  # P(used before the host tier would drop a copy written now) (pbkv)


VALUE_MODELS = ("survival", "prefix")
# When an unclaimed block is priced at its own share (or its group's shared prefix).
UNCLAIMED_SHARE = ("off", "always", "idle-app", "idle-app-shared")


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    prefill_ms_per_token: float = 0.04  # 8B model on an H100: ~16 GFLOP/token at ~400 TFLOP/s
    attention_ms_per_token_ctx: float = 1.3e-6  # 4*layers*d_model FLOP per context token
    host_link_gb_per_s: float = 50.0  # PCIe 5 x16, achievable
    bytes_per_token: int = 131_072  # Llama-3-8B: 2 * 32 layers * 8 kv heads * 128 * 2 bytes
    confidence_samples: float = 20.0  # Wilson bound: n = confidence * this
    lcb_z: float = 1.0  # z of the Wilson lower bound on P(reuse) (0: the point estimate)
    full_trust_confidence: float = 0.6  # confidence at which recency stops counting
    recency_half_life_s: float = 30.0  # recency weight halves every this many s
    eta_weight: float = 0.25  # value / (1 + eta_weight * steps to use)
    eta_unknown_steps: float = 5.0  # steps assumed for a use beyond the horizon
    value_model: str = "prefix"  # "prefix" | "survival" (P(reused before evicted) x saving)
    # "always" (pbkv-unclaimed), "idle-app" (pbkv-appaware: while no workflow of its app runs),
    # "idle-app-shared" (pbkv-appshared: that, a system prompt at its own tail); see below
    unclaimed_share: str = "off"  # when a block no consumer claims is priced at its own share

    def __post_init__(self) -> None:
        for name in (
            "prefill_ms_per_token",
            "attention_ms_per_token_ctx",
            "lcb_z",
            "eta_weight",
            "eta_unknown_steps",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ScorerConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in (
            "host_link_gb_per_s",
            "confidence_samples",
            "full_trust_confidence",
            "recency_half_life_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"ScorerConfig.{name} must be a finite number > 0, got {value!r}")
        check_choice(self, "unclaimed_share", UNCLAIMED_SHARE)
        check_choice(self, "value_model", VALUE_MODELS)
        if not isinstance(self.bytes_per_token, int) or self.bytes_per_token < 1:
            raise ValueError(
                f"ScorerConfig.bytes_per_token must be an int >= 1, got {self.bytes_per_token!r}"
            )


class BlockScore(NamedTuple):
    """A block's value and the components behind it (see the module docstring)."""

    block_hash: bytes
    score: float  # the value
    p_reuse: float  # p_eff
    eta_steps: float | None
    recompute_cost_ms: float
    reload_cost_ms: float
    consumers: int  # (workflow, agent) pairs expected to extend the block


def any_reuse(ps: Iterable[float]) -> float:
    """P(at least one of several independent consumers reuses a block): 1 - prod(1 - p)."""
    none = 1.0
    for p in ps:
        none *= 1.0 - p
    return 1.0 - none


class Scorer:
    def __init__(self, config: ScorerConfig | None = None) -> None:
        self.config = config or ScorerConfig()

    def lower_bound(self, p: float, confidence: float) -> float:
        """Wilson lower bound of ``p`` seen over ``confidence * confidence_samples`` trials
        (0 when the confidence is 0: nothing is trusted)."""
        n = confidence * self.config.confidence_samples
        if n <= 0.0 or p <= 0.0:
            return 0.0
        z = self.config.lcb_z
        z2 = z * z
        # The Wilson bound multiplied through by n: stable for tiny n.
        margin = z * math.sqrt(max(n * p * (1 - p), 0.0) + z2 / 4)
        return max(0.0, min(p, (n * p + z2 / 2 - margin) / (n + z2)))

    def effective_p(self, p_pred: float, confidence: float, age_s: float | None) -> float:
        """``p_eff``: the forecast's ``p_pred`` trusted as far as ``confidence`` allows, the
        rest recency (see the module docstring)."""
        c = self.config
        w = min(1.0, confidence / c.full_trust_confidence)
        p_recent = 0.0 if age_s is None else 0.5 ** (max(age_s, 0.0) / c.recency_half_life_s)
        return w * p_pred + (1.0 - w) * p_recent

    def recompute_ms(self, start_token: int, end_token: int) -> float:
        """Prefill cost of tokens [start_token, end_token) (per-token cost grows linearly
        with position)."""
        n = max(end_token - start_token, 0)
        c = self.config
        return (
            n * c.prefill_ms_per_token
            + c.attention_ms_per_token_ctx * (end_token * end_token - start_token * start_token) / 2
        )

    def reload_ms(self, num_tokens: int) -> float:
        return num_tokens * self.config.bytes_per_token / (self.config.host_link_gb_per_s * 1e6)

    def score(
        self,
        outlooks: list[Outlook],
        *,
        start_token: int,
        num_tokens: int,
        chain_end_token: int,
        on_cpu: bool,
        age_s: float | None,
        block_hash: bytes = b"",
        consumers: int = 0,
        app_running: int = 0,
        shared_end_token: int | None = None,
    ) -> BlockScore:
        """The block's value (see the module docstring). ``chain_end_token``: end of the
        longest consumer prompt through this block (>= its own end); ``on_cpu``: a CPU copy
        the block can count on; ``app_running``: running workflows of the apps the block may
        serve and ``shared_end_token`` the end of the longest agent-group prefix through it (read
        for an unclaimed block); ``block_hash`` and ``consumers`` are carried
        into the record as they are."""
        c = self.config
        merged = combine(outlooks)  # each p already a lower bound
        if merged is None:
            eta, conf, p_pred = None, 0.0, 0.0
        else:
            eta, conf, p_pred = merged.eta_steps, merged.confidence, merged.p
        p_eff = self.effective_p(p_pred, conf, age_s)
        end_own = start_token + num_tokens
        end = max(chain_end_token, end_own)
        reload = self.reload_ms(num_tokens)
        share = merged is None and self._share_unclaimed(app_running)
        if share and c.unclaimed_share == "idle-app-shared" and shared_end_token is not None:
            recompute = self.recompute_ms(start_token, max(shared_end_token, end_own))
        elif not share and (c.value_model == "prefix" or consumers > 1):
            recompute = self.recompute_ms(start_token, end)
        else:  # its own share of the prompt (survival, or an unclaimed block shared out)
            recompute = self.recompute_ms(0, end) * num_tokens / end
        loss = reload if on_cpu else recompute
        urgency = 1.0 + c.eta_weight * (eta if eta is not None else c.eta_unknown_steps)
        return BlockScore(
            block_hash, p_eff * loss / urgency, p_eff, eta, recompute, reload, consumers
        )

    def context_score(
        self, outlooks: list[Outlook], *, chain_end_token: int, age_s: float | None
    ) -> float:
        """The value of a consumer's whole context: ``score`` of the prompt's tokens
        [0, ``chain_end_token``) as one unit, without a CPU copy (what losing any block of
        it from the host tier puts at risk, at the consumers' P(reuse))."""
        return self.score(
            outlooks,
            start_token=0,
            num_tokens=chain_end_token,
            chain_end_token=chain_end_token,
            on_cpu=False,
            age_s=age_s,
        ).score

    def _share_unclaimed(self, app_running: int) -> bool:
        mode = self.config.unclaimed_share
        return mode == "always" or (mode != "off" and app_running == 0)


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
    return Outlook(
        any_reuse(o.p for o in outlooks),
        eta,
        conf,
        any_reuse(o.p_soon for o in outlooks),
        any_reuse(o.p_host for o in outlooks),
    )


def survival_p(p_within: Sequence[float], steps: float) -> float:
    """P(use within ``steps`` steps) from a forecast's ``p_within`` (P(use within 1, 2, ...
    steps)): linear between whole steps and from 0 at 0 steps; beyond the horizon its last
    value (nothing is known further out: conservative); ``inf`` steps: the last value."""
    if not p_within or not steps > 0:
        return 0.0
    if steps >= len(p_within):
        return p_within[-1]
    k = int(steps)
    lo = p_within[k - 1] if k >= 1 else 0.0
    return lo + (p_within[k] - lo) * (steps - k)


def reuse_p(p_within: Sequence[float], steps: float, age_steps: float = math.inf) -> float:
    """P(use within ``steps`` steps), reading past the forecast's horizon H: ``survival_p``
    within it. Beyond it, each further horizon brings the horizon's figure ``p_H`` again
    while the workflow still runs, and a workflow ``age_steps`` steps old still runs ``d``
    steps later with P ``age / (age + d)`` (the Copernican estimate: nothing known of its
    length but its age), so from step H to ``steps`` it gets ``E = age * ln((age + steps)
    / (age + H)) / H`` further horizons: ``1 - (1 - p_H) ** (1 + E)``. Age unbounded:
    ``E = (steps - H) / H``; ``inf`` steps: 1 if ``p_H > 0``. For the write-back gate,
    where a host copy can outlast the horizon many times over."""
    h = len(p_within)
    if not h or not steps > h:
        return survival_p(p_within, steps)
    last = p_within[-1]
    if last <= 0.0 or last >= 1.0 or math.isinf(steps):
        return 1.0 if last > 0.0 else 0.0
    more = steps - h
    if math.isfinite(age_steps):
        a = max(age_steps, 0.0)
        more = a * math.log((a + steps) / (a + h))
    return 1.0 - (1.0 - last) ** (1.0 + more / h)
