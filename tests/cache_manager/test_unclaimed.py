"""pbkv-unclaimed: a block no consumer claims is priced at its own share of its prompt
(``ScorerConfig.unclaimed_share``), so at concurrency 1 a finished workflow's possible system
prompt no longer outranks the running workflow's own context (docs/cache-manager.md,
"Concurrency 1"). Exact eviction orders, step by step, beside pbkv's."""

from __future__ import annotations

import pytest
from cm_helpers import Harness, b, finish
from support import ScriptedPredictor

from pbkv.cache_manager.policies import POLICIES, PbkvPolicyConfig
from pbkv.cache_manager.scorer import ScorerConfig


@pytest.mark.parametrize("policy", ["pbkv", "pbkv-unclaimed"])
def test_a_finished_workflows_prompt_against_the_running_ones_context(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.1, 0.2, None)}, 0.9)
    p.script[("w2", 1)] = ({"B": (0.6, 0.7, 1.0)}, 0.9)
    h = Harness.make(policy, predictor=p, horizon=2)
    m = h.manager
    # One workflow at a time. w1 runs agent A (sA0 sA1: maybe A's system prompt, no second
    # workflow has shown it yet; then its history a1); its forecast: A unlikely again.
    m.start_workflow("w1", "app")
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"sA0", b"sA1", b"a1"))
    finish(h, "w1", "A")
    assert h.order() == b("a1", "sA1", "sA0")
    # w1 ends: its blocks may be A's system prompt, so none is dead; no consumer claims
    # them, they rank on recency alone (just used).
    m.end_workflow("w1")
    assert h.order() == b("a1", "sA1", "sA0")
    # w2 (the next workflow) runs agent B over its own context c0 c1 c2; its forecast: B
    # again next step, P 0.6 (a Wilson lower bound below it). pbkv prices w1's unclaimed
    # blocks at recency (near 1) x the whole tail behind each, so they interleave with w2's
    # context by depth and w2's tail c2 goes before sA1, c1 before sA0; pbkv-unclaimed prices
    # each unclaimed block at its own share, so w1's three go first, w2's context stays whole.
    h.tick(2)
    m.start_workflow("w2", "app")
    m.step_started("w2", "B")
    h.run("w2", "B", (b"c0", b"c1", b"c2"))
    finish(h, "w2", "B")
    want = {
        "pbkv": b("a1", "c2", "sA1", "c1", "sA0", "c0"),
        "pbkv-unclaimed": b("a1", "sA1", "sA0", "c2", "c1", "c0"),
    }[policy]
    assert h.order() == want


def test_the_variant_is_registered_and_checked() -> None:
    """``--policies pbkv-unclaimed`` runs pbkv with the flag; the default keeps it off."""
    assert POLICIES.create("pbkv-unclaimed", PbkvPolicyConfig(), 4).scorer.config.unclaimed_share
    assert not POLICIES.create("pbkv", PbkvPolicyConfig(), 4).scorer.config.unclaimed_share
    with pytest.raises(ValueError, match="unclaimed_share"):
        ScorerConfig(unclaimed_share=1)  # type: ignore[arg-type]
