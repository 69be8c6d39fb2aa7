"""pbkv's write-back gate once the CPU tier is full, step by step: a block gets a CPU copy
only if P(reused before the tier would drop the copy) >= ``min_offload_p`` (gate "host",
the tier's measured turnover), against the former P(reused within the horizon) (gate
"horizon")."""

from __future__ import annotations

import math

from cm_helpers import Harness, b
from support import ScriptedPredictor

from pbkv.cache_manager.events import Tier
from pbkv.cache_manager.policies import POLICIES, PbkvPolicyConfig
from pbkv.cache_manager.scorer import Scorer, reuse_p, survival_p
from pbkv.predictor.forecast import ObservedStep
from pbkv.predictor.recalibration import RecalibrationConfig


def test_reuse_p_extends_the_horizon_while_the_workflow_likely_runs() -> None:
    p_within = (0.3, 0.5)  # P(use within 1, 2 steps)
    for steps in (0.0, 0.5, 1.0, 1.5, 2.0):  # within the horizon: survival_p's reading
        assert reuse_p(p_within, steps, 3.0) == survival_p(p_within, steps)
    # Age unbounded: every further horizon brings P 0.5 again (1 - 0.5^2 over two).
    assert math.isclose(reuse_p(p_within, 4.0), 0.75)
    assert math.isclose(reuse_p(p_within, 3.0), 1 - 0.5**1.5)
    # 2 steps old: still running d steps on with P 2 / (2 + d), so steps 2..4 bring
    # 2 ln(6 / 4) / 2 = 0.41 of a further horizon, not 1.
    assert math.isclose(reuse_p(p_within, 4.0, 2.0), 1 - 0.5 ** (1 + math.log(1.5)))
    # The older the workflow, the closer to the unbounded figure.
    figures = [reuse_p(p_within, 10.0, age) for age in (1.0, 5.0, 50.0, 5000.0, math.inf)]
    assert figures == sorted(figures) and math.isclose(figures[-2], figures[-1], rel_tol=1e-3)
    assert reuse_p(p_within, math.inf, 1.0) == 1.0  # a copy kept for ever is used if p_H > 0
    assert reuse_p((0.0, 0.0), math.inf) == 0.0 == reuse_p((0.0, 0.0), 9.0)
    assert reuse_p((0.4, 1.0), 7.0, 1.0) == 1.0
    assert reuse_p((), 5.0) == 0.0


def _step(h: Harness, wf: str, agent: str, hashes: tuple[bytes, ...], t: float) -> None:
    h.tick(t)
    h.manager.step_started(wf, agent)
    h.run(wf, agent, hashes)
    h.manager.step_finished(wf, ObservedStep(agent, end_s=t))


def _to_cpu(h: Harness, *hashes: bytes) -> None:
    """Anonymous blocks computed, copied to the CPU tier and evicted from the GPU."""
    for x in hashes:
        h.run(None, None, (x,))
        h.store((x,), None, Tier.CPU)
        h.evict(x)


def test_a_copy_is_written_back_if_its_reuse_comes_before_the_host_tier_drops_it() -> None:
    p = ScriptedPredictor()
    # After each step: A comes back with P 0.3 next step, 0.5 within two (never certain
    # within the horizon); B and C are not called again.
    a = {"A": (0.3, 0.5, None)}
    p.script[("w1", 1)] = (a, 1.0)
    p.script[("w1", 2)] = ({**a, "B": (0.0, 0.0, None)}, 1.0)
    p.script[("w1", 3)] = ({**a, "B": (0.0, 0.0, None), "C": (0.0, 0.0, None)}, 1.0)
    rigs = {
        gate: Harness.make(
            predictor=p,
            horizon=2,
            gpu=8,
            cpu=2,
            pbkv=PbkvPolicyConfig(offload_gate=gate),
            recalibration=RecalibrationConfig(enabled=False),  # the forecasts as scripted
        )
        for gate in ("host", "horizon")
    }
    lb = Scorer().lower_bound
    assert lb(0.5, 1.0) < 0.7  # A's P(reuse within the horizon): below the gate

    def offload(gate: str) -> list[bytes]:
        return list(rigs[gate].plan().offload)

    def p_host() -> float:
        """A's outlook in the host gate's plan."""
        rigs["host"].plan()
        return rigs["host"].manager._workflows["w1"].outlooks["A"].p_host

    for h in rigs.values():
        h.manager.start_workflow("w1", "app")
        h.plan()  # t = 0: the host tier's turnover is timed from here
        # t = 10: A runs (10 s per step). The CPU tier has room: every block is written back.
        _step(h, "w1", "A", (b"a0", b"a1"), 10.0)
    assert offload("host") == offload("horizon") == b("a1", "a0")
    # The CPU tier fills with two other copies. The horizon gate now refuses A's blocks
    # (P 0.5 within two steps); the tier has dropped nothing yet, so a copy would stay for
    # ever and A's later call finds it: the host gate writes them back.
    for h in rigs.values():
        _to_cpu(h, b"z0", b"z1")
    assert offload("horizon") == []
    assert p_host() == lb(1.0, 1.0) >= 0.7
    assert offload("host") == b("a1", "a0")
    # t = 20: the tier drops z0 z1 for two new copies while B runs. Turnover: 2 copies in
    # 10 s, weighed 1 - exp(-10/30): a copy written now lasts 2 / rate = 35 s, 3.5 of w1's
    # steps; w1, 2 steps old, still runs then with P 2 / 5.5, and P(A within 3.5 steps) =
    # 0.60 is 0.49 as a lower bound: the host gate refuses too (B's block, not called
    # again, is refused by both).
    for h in rigs.values():
        h.tick(20.0)
        h.evict(b"z0", b"z1", tier=Tier.CPU)
        _to_cpu(h, b"y0", b"y1")
        _step(h, "w1", "B", (b"b0",), 20.0)
    rate = (1.0 - math.exp(-1.0 / 3.0)) * 2 / 10
    steps = 2 / rate / 10.0
    assert 3.5 < steps < 3.6
    assert math.isclose(p_host(), lb(reuse_p((0.3, 0.5), steps, 2.0), 1.0))
    assert p_host() < 0.7
    assert offload("host") == offload("horizon") == []
    # t = 100: C runs; the tier has dropped nothing for 80 s, so its rate decays by
    # exp(-80/30): a copy would last 506 s, 15 of w1's steps (33 s each now), and A comes
    # back within that with P 0.87 (lower bound 0.78): written back again.
    for h in rigs.values():
        _step(h, "w1", "C", (b"c0",), 100.0)
    steps = 2 / (rate * math.exp(-80.0 / 30.0)) / (100.0 / 3)
    assert 15.1 < steps < 15.3
    assert math.isclose(p_host(), lb(reuse_p((0.3, 0.5), steps, 3.0), 1.0))
    assert p_host() >= 0.7
    assert offload("host") == b("a1", "a0")
    assert offload("horizon") == []


def test_the_pbkv_hostgate_policy_is_pbkv_with_the_host_gate() -> None:
    """``--policies pbkv-hostgate`` runs the gate above beside the default one."""
    assert POLICIES.create("pbkv-hostgate", PbkvPolicyConfig(), 4).host_gate
    assert not POLICIES.create("pbkv", PbkvPolicyConfig(), 4).host_gate
