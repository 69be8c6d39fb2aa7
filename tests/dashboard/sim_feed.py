"""What feeds the dashboard in the browser tests: real ``CacheManager``s driving the simulated
engine (400 GPU and 2000 CPU blocks, concurrency 8, the ``pbkv`` / ``lru`` policies of
``pbkv bench`` with 4 blocks of headroom).

``Replay(policy, predictor, preset, prompts)`` is one policy's manager (on its own copy of the
predictor) and engine in one process; ``sim_manager`` builds the manager alone, for an engine
attached later (the service test links it over the EngineLink stream). The manager's clock is
the engine's simulated time, 0.0 until an engine is attached.
"""

from __future__ import annotations

import copy

GPU_BLOCKS = 400
CPU_BLOCKS = 2000
CONCURRENCY = 8


class EngineClock:
    """A manager's clock for an engine attached after the manager is built."""

    def __init__(self) -> None:
        self.engine = None

    def __call__(self) -> float:
        return self.engine.now_s if self.engine is not None else 0.0


def sim_manager(policy: str, predictor, preset, clock: EngineClock):
    from pbkv.bench.policy_run import manager_config
    from pbkv.cache_manager.manager import CacheManager

    return CacheManager(manager_config(policy, 4, preset.cost), predictor=predictor, clock=clock)


def sim_engine_config(preset, engine_id: str):
    from pbkv.engine_adapter.sim.engine import EngineConfig

    return EngineConfig(
        gpu_blocks=GPU_BLOCKS,
        cpu_blocks=CPU_BLOCKS,
        tokens_per_block=preset.tokens_per_block,
        engine_id=engine_id,
    )


class Replay:
    """One policy's manager + simulated engine; replays workflows chunk by chunk."""

    def __init__(self, policy: str, predictor, preset, prompts) -> None:
        from pbkv.engine_adapter.sim.attach import attach_manager

        clock = EngineClock()
        self.manager = sim_manager(policy, copy.deepcopy(predictor), preset, clock)
        self.engine = attach_manager(
            self.manager, sim_engine_config(preset, f"sim-{policy}"), preset.cost
        )
        clock.engine = self.engine
        self.prompts = prompts
        self.latencies: list[float] = []

    def run(self, workflows, keep_open: str | None = None) -> None:
        from pbkv.engine_adapter.sim.replay import ReplayConfig, replay

        orchestrator = self.manager if keep_open is None else _KeepOpen(self.manager, keep_open)
        result = replay(
            self.engine,
            workflows,
            ReplayConfig(concurrency=CONCURRENCY),
            orchestrator=orchestrator,
            prompts=self.prompts,
        )
        self.latencies.extend(w.latency_s for w in result.workflows)


class _KeepOpen:
    """The manager, except that one workflow is never ended: the manager only lists blocks
    that a running workflow's consumers keep, and the page is opened after the replay."""

    def __init__(self, manager, workflow_id: str) -> None:
        self._manager, self._keep_open = manager, workflow_id

    def end_workflow(self, workflow_id: str, **kwargs) -> None:
        if workflow_id != self._keep_open:
            self._manager.end_workflow(workflow_id, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._manager, name)
