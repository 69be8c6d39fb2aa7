"""Attaching a ``SimEngine`` to a cache manager: in process, or remotely over gRPC.

    in process:  engine --events--> manager.on_engine_event
                 engine <--plans--- manager.plan(engine_id)        (same thread, synchronous)
    remote:      engine --events--> EngineLinkClient.send  ---> pbkv service (Attach stream)
                 engine <--plans--- EngineLinkClient.latest_plan   (latest wins, never waits)

Either way the engine's policy comes from the same ``CacheManager`` code. For the workflow
side, the in-process manager is itself the replay driver's orchestrator; a remote service is
reached with ``pbkv.engine_adapter.replay.ClientOrchestrator(PbkvClient(...))``.
"""

from __future__ import annotations

from typing import Any

from pbkv.engine_adapter.sim.cost_model import CostModel
from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine


def attach_manager(
    manager: Any, config: EngineConfig, cost: CostModel, start_s: float = 0.0
) -> SimEngine:
    """Register the engine with an in-process ``CacheManager`` and connect both ways."""
    manager.attach_engine(
        config.engine_id,
        gpu_blocks=config.gpu_blocks,
        cpu_blocks=config.cpu_blocks,
        tokens_per_block=config.tokens_per_block,
    )
    return SimEngine(
        config, cost, sink=manager.on_engine_event, plans=manager.plan, start_s=start_s
    )


def attach_link(
    client: Any, config: EngineConfig, cost: CostModel, start_s: float = 0.0
) -> SimEngine:
    """Drive the engine through a ``pbkv.service.engine_client.EngineLinkClient`` (its
    ``EngineLinkConfig`` must carry the same engine id and capacities, which it sends in its
    hello)."""
    link_cfg = getattr(client, "config", None)
    if (
        link_cfg is not None
        and getattr(link_cfg, "engine_id", config.engine_id) != config.engine_id
    ):
        raise ValueError(
            f"engine_id mismatch: link says {link_cfg.engine_id!r}, "
            f"engine says {config.engine_id!r}"
        )
    return SimEngine(
        config,
        cost,
        sink=client.send,
        plans=lambda _engine_id: client.latest_plan(),
        start_s=start_s,
    )
