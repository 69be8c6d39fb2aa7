"""One replay of ``pbkv bench policies`` (and of ``bench headroom``, the demo, the bound
tests): a policy's ``CacheManager`` attached to the simulated engine, or the ``ideal`` cache
alone, replaying a workload at one point; its summary row with the manager's prefetch figures.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from pbkv.bench.policies_report import CLAIRVOYANT, IDEAL


@dataclass(slots=True)
class RunSpec:
    policy: str
    gpu_blocks: int
    cpu_blocks: int
    concurrency: int
    horizon: int = 4
    think_time_s: float = 0.0
    trace_pauses: bool = False  # pause before rounds as the trace's times show
    extra: dict[str, Any] = field(default_factory=dict)

    def replay_config(self) -> Any:
        from pbkv.engine_adapter.sim.replay import ReplayConfig

        return ReplayConfig(
            concurrency=self.concurrency,
            think_time_s=self.think_time_s,
            trace_pauses=self.trace_pauses,
        )

    def row(self, policy: str, cpu_blocks: int) -> dict[str, Any]:
        """The head of a result row: what was run, at which point."""
        return {
            "policy": policy,
            "gpu_blocks": self.gpu_blocks,
            "cpu_blocks": cpu_blocks,
            "concurrency": self.concurrency,
        }


def manager_config(policy: str, horizon: int, cost: Any) -> Any:
    """A ``ManagerConfig`` for ``policy`` whose scorer prices recompute and reload with the
    engine's own cost model."""
    from pbkv.cache_manager.manager import ManagerConfig
    from pbkv.cache_manager.policies import PbkvPolicyConfig
    from pbkv.cache_manager.scorer import ScorerConfig

    scorer = ScorerConfig(
        prefill_ms_per_token=cost.prefill_s_per_token * 1e3,
        attention_ms_per_token_ctx=cost.prefill_s_per_token_ctx * 1e3,
        host_link_gb_per_s=cost.h2d_bytes_per_s / 1e9,
        bytes_per_token=cost.kv_bytes_per_token,
    )
    return ManagerConfig(policy=policy, horizon=horizon, pbkv=PbkvPolicyConfig(scorer=scorer))


def run_policy(
    spec: RunSpec,
    workflows: list,
    predictor: Any,
    preset: Any,
    prompts: Any,
    future: list | None = None,
) -> dict[str, Any]:
    """Replay ``workflows`` with one policy; returns the summary row."""
    from pbkv.cache_manager.baselines import engine_options
    from pbkv.cache_manager.manager import CacheManager
    from pbkv.engine_adapter.sim.attach import attach_manager
    from pbkv.engine_adapter.sim.engine import EngineConfig
    from pbkv.engine_adapter.sim.replay import replay

    if spec.policy == IDEAL:
        return _run_ideal(spec, workflows, preset, prompts)
    engine_ref: list[Any] = []
    manager = CacheManager(
        manager_config(spec.policy, spec.horizon, preset.cost),
        predictor=copy.deepcopy(predictor),
        clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
    )
    if spec.policy == CLAIRVOYANT:
        # The replayed workflows and their exact prompt blocks: Belady per block.
        manager.set_oracle_future(
            future if future is not None else workflows,
            prompt_blocks=lambda w, i: prompts.get(w, i)[1],
        )
    engine = attach_manager(
        manager,
        EngineConfig(
            gpu_blocks=spec.gpu_blocks,
            cpu_blocks=spec.cpu_blocks,
            tokens_per_block=preset.tokens_per_block,
            **engine_options(spec.policy),
        ),
        preset.cost,
    )
    engine_ref.append(engine)
    wall = time.perf_counter()
    result = replay(engine, workflows, spec.replay_config(), orchestrator=manager, prompts=prompts)
    row = spec.row(spec.policy, spec.cpu_blocks)
    row.update(with_manager_prefetch(result.summary(), manager.stats().to_dict()))
    row["wall_s"] = time.perf_counter() - wall
    stats = manager.stats()
    for name in ("fallback_lru", "predictor_top1_accuracy", "predictor_brier"):
        value = getattr(stats, name, None)
        if isinstance(value, bool | int | float):
            row[name] = value
    return row


# The prefetch figures are the manager's (CacheManager.stats: one definition, the one the
# dashboard shows, docs/dashboard.md); the simulated engine's own counts stay apart.
PREFETCH_KEYS = (
    "prefetched_blocks",
    "prefetch_used_blocks",
    "prefetch_wasted_blocks",
    "prefetch_precision",
    "prefetch_recall",
)


def with_manager_prefetch(summary: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """A replay's ``summary()`` with the manager's prefetch figures (``stats``: a
    ``ManagerStats.to_dict()``), the engine's counts under ``engine_prefetch``."""
    engine = {k: summary[k] for k in ("prefetched_blocks", "prefetch_used_blocks") if k in summary}
    return {
        **{k: v for k, v in summary.items() if k not in engine},
        **{k: stats.get(k) for k in PREFETCH_KEYS},
        "engine_prefetch": engine,
    }


def _run_ideal(spec: RunSpec, workflows: list, preset: Any, prompts: Any) -> dict[str, Any]:
    from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine
    from pbkv.engine_adapter.sim.replay import replay

    engine = SimEngine(
        EngineConfig(
            gpu_blocks=spec.gpu_blocks,
            cpu_blocks=0,
            tokens_per_block=preset.tokens_per_block,
            ideal_cache=True,
        ),
        preset.cost,
    )
    wall = time.perf_counter()
    result = replay(engine, workflows, spec.replay_config(), prompts=prompts)
    row = spec.row(IDEAL, 0)
    row.update(result.summary())
    row["wall_s"] = time.perf_counter() - wall
    return row
