"""pbkv-unclaimed and pbkv-appaware: a block no consumer claims is priced at its own share of
its prompt (``ScorerConfig.unclaimed_share``), so at concurrency 1 a finished workflow's
possible system prompt no longer outranks the running workflow's own context
(docs/cache-manager.md, "Concurrency 1"). pbkv-unclaimed does so always ("always"),
pbkv-appaware only while no workflow of an app the block may serve runs ("idle-app"): while
one runs, it may yet call the agent and read the prefix, so the block keeps pbkv's tail
pricing; pbkv-appshared ("idle-app-shared") prices an idle app's system prompt at its own
tail instead. Exact eviction orders, step by step, beside pbkv's."""

from __future__ import annotations

import pytest
from cm_helpers import Harness, b, finish
from support import ScriptedPredictor

from pbkv.cache_manager.policies import POLICIES, PbkvPolicyConfig
from pbkv.cache_manager.scorer import ScorerConfig

# w1's blocks (sA0 sA1 a1) interleaved with w2's context by depth, as pbkv prices them.
TAIL = b("a1", "c2", "sA1", "c1", "sA0", "c0")
# w1's blocks first, w2's context whole, as pbkv-unclaimed prices them.
SHARE = b("a1", "sA1", "sA0", "c2", "c1", "c0")


@pytest.mark.parametrize("policy", ["pbkv", "pbkv-unclaimed", "pbkv-appaware"])
def test_unclaimed_blocks_priced_by_whether_their_app_runs(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w1", 1)] = ({"A": (0.1, 0.2, None)}, 0.9)
    p.script[("w2", 1)] = ({"B": (0.6, 0.7, 1.0)}, 0.9)
    h = Harness.make(policy, predictor=p, horizon=2)
    m = h.manager
    # w1 of app "a" runs agent A over sA0 sA1 (maybe A's system prompt: no second workflow
    # has shown it yet) and its history a1, then ends: no consumer claims its blocks, none is
    # dead (they may be a system prompt).
    m.start_workflow("w1", "a")
    h.tick(1)
    m.step_started("w1", "A")
    h.run("w1", "A", (b"sA0", b"sA1", b"a1"))
    finish(h, "w1", "A")
    m.end_workflow("w1")
    assert h.order() == b("a1", "sA1", "sA0")
    # w2 of another app, "b", runs agent B over its context c0 c1 c2 (forecast: B again,
    # P 0.6). No workflow of app "a" runs, so pbkv-appaware prices w1's blocks at their own
    # share as pbkv-unclaimed does: they go first; pbkv interleaves them by depth.
    h.tick(2)
    m.start_workflow("w2", "b")
    m.step_started("w2", "B")
    h.run("w2", "B", (b"c0", b"c1", b"c2"))
    finish(h, "w2", "B")
    assert h.order() == {"pbkv": TAIL, "pbkv-unclaimed": SHARE, "pbkv-appaware": SHARE}[policy]
    # w3 of app "a" starts (no step yet, no forecast; the clock stands still): it may call A
    # and read sA0 sA1, so pbkv-appaware goes back to pbkv's order; pbkv-unclaimed keeps its.
    m.start_workflow("w3", "a")
    assert h.order() == {"pbkv": TAIL, "pbkv-unclaimed": SHARE, "pbkv-appaware": TAIL}[policy]
    # w3 ends before any step: app "a" is idle again, and so is the variant's pricing.
    m.end_workflow("w3")
    assert h.order() == {"pbkv": TAIL, "pbkv-unclaimed": SHARE, "pbkv-appaware": SHARE}[policy]


@pytest.mark.parametrize("policy", ["pbkv", "pbkv-appaware", "pbkv-appshared"])
def test_an_idle_apps_system_prompt_priced_at_its_own_tail(policy: str) -> None:
    p = ScriptedPredictor()
    p.script[("w3", 1)] = ({"B": (0.6, 0.7, 1.0)}, 0.9)
    h = Harness.make(policy, predictor=p, horizon=2, gpu=16)
    m = h.manager
    h.tick(1)
    # w1 and w2 of app "a" each run agent A once over A's system prompt sA0 sA1 and their
    # own histories (x1 x2 x3; y1), then end: the two prompts confirm sA0 sA1 as the group
    # (a, A)'s shared prefix, the histories are dead (-1, first out, by LRU).
    for wf, history in (("w1", (b"x1", b"x2", b"x3")), ("w2", (b"y1",))):
        m.start_workflow(wf, "a")
        m.step_started(wf, "A")
        h.run(wf, "A", (b"sA0", b"sA1", *history), gpu_hits=2 if wf == "w2" else 0)
        finish(h, wf, "A")
        m.end_workflow(wf)
    assert h.order() == b("x3", "x2", "x1", "y1", "sA1", "sA0")
    # w3 of app "b" runs agent B over c0 c1 c2 (forecast: B again, P 0.6); app "a" is idle.
    # pbkv prices sA0 sA1 at recency x the longest prompt ever through them (to x3), above
    # all of w3's context; pbkv-appaware at their own share, below it; pbkv-appshared at
    # the system prompt's own tail (sA1: one block, sA0: two), between w3's blocks.
    h.tick(2)
    m.start_workflow("w3", "b")
    m.step_started("w3", "B")
    h.run("w3", "B", (b"c0", b"c1", b"c2"))
    finish(h, "w3", "B")
    order = h.order()
    assert order[:4] == b("x3", "x2", "x1", "y1")
    assert (
        order[4:]
        == {
            "pbkv": b("c2", "c1", "c0", "sA1", "sA0"),
            "pbkv-appaware": b("sA1", "sA0", "c2", "c1", "c0"),
            "pbkv-appshared": b("sA1", "c2", "sA0", "c1", "c0"),
        }[policy]
    )


def test_the_variant_is_registered_and_checked() -> None:
    """``--policies pbkv-unclaimed`` / ``-appaware`` / ``-appshared`` run pbkv with the mode
    "always" / "idle-app" / "idle-app-shared"; the default is "off"."""
    for name, mode in (
        ("pbkv-unclaimed", "always"),
        ("pbkv-appaware", "idle-app"),
        ("pbkv-appshared", "idle-app-shared"),
        ("pbkv", "off"),
    ):
        assert POLICIES.create(name, PbkvPolicyConfig(), 4).scorer.config.unclaimed_share == mode
    with pytest.raises(ValueError, match="unclaimed_share"):
        ScorerConfig(unclaimed_share="sometimes")
