"""The strict bound (engine_adapter/sim/bound.py) against every registered policy, replayed as
``pbkv bench policies`` replays them: at no point and seed does any policy have a lower mean
workflow latency or recompute fewer prompt tokens. A reduced set of points runs by default;
the README's bench point (bounded host tier, four seeds' worth) is the slow test."""

from __future__ import annotations

import pytest

from pbkv.bench.bound_report import point_bound
from pbkv.bench.policies import RunSpec, run_policy
from pbkv.bench.workload import distinct_blocks, load_workload, split
from pbkv.cache_manager.policies import POLICIES
from pbkv.engine_adapter.sim.presets import PRESETS
from pbkv.engine_adapter.sim.replay import PromptCache
from pbkv.predictor.registry import PREDICTORS

# Every registered manager policy ("oracle" is clairvoyant's old name) and the ideal cache,
# which ignores capacity: only the capacity-free parts of the bound bind it.
ALL = [p for p in POLICIES.names() if p != "oracle"] + ["ideal"]


def check_points(seed: int, num_workflows: int, knobs: list[str], points: list[tuple]) -> None:
    """``points``: (GPU share of the distinct blocks or an int, CPU blocks as a multiple of
    the GPU's, concurrency, trace pauses)."""
    workflows = load_workload("dynamic", num_workflows, seed, knobs)
    train, test = split(workflows, 0.5)
    predictor = PREDICTORS.create("markov1", workflows=train)
    preset = PRESETS.create("h100-llama8b")
    prompts = PromptCache(32_000, preset.tokens_per_block)
    blocks = distinct_blocks(test, prompts)
    biggest = max(len(prompts.get(w, i)[1]) + 8 for w in test for i in range(len(w.steps)))
    for gpu, host, conc, pauses in points:
        g = gpu if isinstance(gpu, int) else max(biggest, int(gpu * blocks))
        spec = RunSpec("", g, int(host * g), conc, 4, 0.0, pauses)
        bound = point_bound(test, prompts, preset, spec)
        for policy in ALL:
            spec.policy = policy
            row = run_policy(spec, test, predictor, preset, prompts)
            where = (seed, g, spec.cpu_blocks, conc, pauses, policy)
            if policy != "ideal" or not bound.capacity_binds:
                assert row["mean_latency_s"] >= bound.mean_latency_s, where
            assert row["recomputed_tokens"] >= bound.recomputed_tokens, where


@pytest.mark.parametrize("seed", [0, 1])
def test_bound_below_every_policy_reduced(seed: int) -> None:
    check_points(
        seed,
        16,
        ["output_tokens=10,40", "system_tokens=300,2000", "pause_s=1,5"],
        [(0.1, 0.0, 4, False), (0.1, 1.0, 8, False), (0.3, 1.0, 4, True)],
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bound_below_every_policy_at_the_readme_point(seed: int) -> None:
    # docs/simulator.md "Baselines at the README point", with 40 workflows instead of 100.
    check_points(
        seed,
        40,
        ["output_tokens=10,60", "system_tokens=1000,6000", "pause_s=1,30"],
        [(2622, 0.5, 16, False), (2622, 2.0, 16, False), (2622, 1.0, 16, True)],
    )
