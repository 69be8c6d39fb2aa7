"""Property tests: random event sequences (valid or not) keep the directory's invariants, and
every plan is consistent with the directory it was made for."""

from __future__ import annotations

import contextlib
import math

from cm_helpers import ENGINE, Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ScriptedPredictor

from pbkv.cache_manager.errors import CacheManagerError
from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.planner import PlannerConfig
from pbkv.cache_manager.scorer import Outlook, Scorer
from pbkv.predictor.forecast import ObservedStep
from pbkv.trace import Step, Workflow

H = {n: n.encode() for n in ("s0", "s1", "a0", "a1", "b0", "c0", "t0", "t1", "x9")}
# Prompt chains forming a tree (shared system prompt s0 s1, branches), as engines see them.
CHAINS = [
    ("s0", "s1", "a0"),
    ("s0", "s1", "a0", "a1"),
    ("s0", "s1", "b0"),
    ("s0", "c0"),
    ("t0", "t1"),
]
AGENTS = ["A", "B", "C"]
WORKFLOWS = ["w1", "w2", "w3"]
KINDS = [
    "start_req",
    "finish_req",
    "store",
    "remove",
    "clear",
    "wf_start",
    "step_start",
    "step_finish",
    "wf_end",
    "plan",
    "tick",
    "garbage",
]


def _predictor() -> ScriptedPredictor:
    p = ScriptedPredictor()
    for i, wf in enumerate(WORKFLOWS):
        for step in range(1, 60):
            a = AGENTS[(i + step) % 3]
            b = AGENTS[(i + step + 1) % 3]
            p.script[(wf, step)] = ({a: (0.7, 0.9, 1.0), b: (0.2, 0.5, 2.0)}, 0.3 + 0.2 * i)
    return p


def _step(h: Harness, data: st.DataObject, started: list[str]) -> None:
    """One event drawn from the current state: mostly valid, sometimes not."""
    m = h.manager
    d = m._engines[ENGINE].directory
    kind = data.draw(st.sampled_from(KINDS))
    if kind == "start_req":
        chain = tuple(H[n] for n in data.draw(st.sampled_from(CHAINS)))
        g = data.draw(st.integers(0, len(chain)))
        c = data.draw(st.integers(0, len(chain) - g))
        rid = f"q{len(started)}"
        started.append(rid)
        m.on_engine_event(
            RequestStarted(
                ENGINE,
                rid,
                chain,
                4 * len(chain),
                g,
                c,
                data.draw(st.sampled_from(WORKFLOWS + [None])),
                data.draw(st.sampled_from(AGENTS)),
                now_s=h.now[0],
            )
        )
    elif kind == "finish_req" and started:
        m.on_engine_event(
            RequestFinished(ENGINE, data.draw(st.sampled_from(started)), now_s=h.now[0])
        )
    elif kind == "store":
        chain = tuple(H[n] for n in data.draw(st.sampled_from(CHAINS)))
        k = data.draw(st.integers(0, len(chain) - 1))
        m.on_engine_event(
            BlockStored(
                ENGINE,
                chain[k:],
                chain[k - 1] if k else None,
                4,
                data.draw(st.sampled_from([Tier.GPU, Tier.CPU])),
            )
        )
    elif kind == "remove":
        t = data.draw(st.sampled_from([Tier.GPU, Tier.CPU]))
        held = [b.block_hash for b in d if (b.on_gpu if t is Tier.GPU else b.on_cpu)]
        pool = held or list(H.values())
        m.on_engine_event(
            BlockRemoved(
                ENGINE, tuple(data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))), t
            )
        )
    elif kind == "clear":
        m.on_engine_event(
            AllBlocksCleared(ENGINE, data.draw(st.sampled_from([None, Tier.GPU, Tier.CPU])))
        )
    elif kind == "wf_start":
        m.start_workflow(data.draw(st.sampled_from(WORKFLOWS)), "app")
    elif kind == "step_start":
        m.step_started(data.draw(st.sampled_from(WORKFLOWS)), data.draw(st.sampled_from(AGENTS)))
    elif kind == "step_finish":
        wf = data.draw(st.sampled_from(WORKFLOWS))
        m.step_finished(wf, ObservedStep(data.draw(st.sampled_from(AGENTS))))
    elif kind == "wf_end":
        m.end_workflow(data.draw(st.sampled_from(WORKFLOWS)))
    elif kind == "plan":
        _check_plan(h)
    elif kind == "tick":
        h.tick(h.now[0] + data.draw(st.floats(0.0, 100.0)))
    elif kind == "garbage":
        m.on_engine_event(BlockStored(ENGINE, (H["x9"],), H["x9"] * 2, 4, Tier.GPU))


def _check_plan(h: Harness) -> None:
    plan = h.plan()
    d = h.manager._engines[ENGINE].directory
    named = list(plan.evict_first)
    assert len(named) == len(set(named)), "a block named twice"
    for x in named:
        assert d.get(x) is not None and d.get(x).evictable, "named block not evictable"
    for x in plan.offload:
        assert d.get(x).on_gpu and not d.get(x).on_cpu, "offload of a block not GPU-only"
    for x in plan.prefetch:
        assert d.get(x).on_cpu and not d.get(x).on_gpu, "prefetch of a block not CPU-only"
    assert len(plan.prefetch) <= h.manager.config.planner.transfer_budget_blocks
    for s in h.manager.top_kept(10):
        assert math.isfinite(s.score) and 0.0 <= s.p_reuse <= 1.0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["lru", "lru-offload", "kvflow", "pbkv", "oracle"]), data=st.data())
def test_random_event_sequences_keep_invariants(policy: str, data: st.DataObject) -> None:
    h = Harness.make(
        policy,
        gpu=6,
        cpu=4,
        predictor=_predictor(),
        horizon=2,
        planner=PlannerConfig(offload_window_blocks=3, transfer_budget_blocks=2),
    )
    if policy == "oracle":
        # Half the examples give the oracle each future step's prompt blocks (exact mode).
        exact = data.draw(st.booleans())
        h.manager.set_oracle_future(
            [Workflow(w, "app", tuple(Step(a, (), 0) for a in "ABCAB")) for w in WORKFLOWS],
            prompt_blocks=(lambda wf, i: [H[n] for n in CHAINS[i % len(CHAINS)]])
            if exact
            else None,
        )
    started: list[str] = []
    for _ in range(data.draw(st.integers(0, 60))):
        # Rejected input must leave everything consistent (checked right after).
        with contextlib.suppress(CacheManagerError):
            _step(h, data, started)
        h.manager.check_integrity()
    _check_plan(h)
    s = h.manager.stats()
    assert s.gpu_blocks_cached <= 6 and s.cpu_blocks_cached <= 4
    assert s.reused_tokens >= 0 and s.recomputed_tokens >= 0


@given(
    ps=st.lists(
        st.tuples(st.floats(0, 1), st.floats(0, 1), st.one_of(st.none(), st.floats(0, 10))),
        max_size=6,
    ),
    start=st.integers(0, 4000),
    age=st.one_of(st.none(), st.floats(0, 1e4)),
    on_cpu=st.booleans(),
)
def test_scorer_is_bounded_and_conservative(ps, start, age, on_cpu) -> None:
    sc = Scorer()
    outlooks = [Outlook(sc.lower_bound(p, c), eta, c) for p, c, eta in ps]
    for (p, _c, _eta), o in zip(ps, outlooks, strict=True):
        assert 0.0 <= o.p <= p  # the lower bound never exceeds the point estimate
    s = sc.score(
        outlooks,
        start_token=start,
        num_tokens=16,
        chain_end_token=start + 64,
        on_cpu=on_cpu,
        age_s=age,
    )
    assert 0.0 <= s.p_reuse <= 1.0 and s.score >= 0.0 and math.isfinite(s.score)
    # A parent (earlier start, same consumers and reach) is never worth less than its child.
    parent = sc.score(
        outlooks,
        start_token=max(start - 16, 0),
        num_tokens=16,
        chain_end_token=start + 64,
        on_cpu=on_cpu,
        age_s=age,
    )
    assert parent.score >= s.score - 1e-12 or on_cpu
