"""The simulated engine (GPU/CPU block pools, cost model, continuous batching) and the
workload driver that replays traces through it. See ``docs/simulator.md``."""

from pbkv.engine_adapter.sim.attach import attach_link, attach_manager
from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.engine import (
    EngineConfig,
    EngineStats,
    RequestResult,
    SimEngine,
    SimRequest,
)
from pbkv.engine_adapter.sim.presets import PRESETS, Preset, load_calibration

__all__ = [
    "PRESETS",
    "CostModel",
    "EngineConfig",
    "EngineStats",
    "Preset",
    "RequestResult",
    "SimEngine",
    "SimRequest",
    "attach_link",
    "attach_manager",
    "load_calibration",
]
