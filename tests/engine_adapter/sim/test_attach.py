"""The simulated engine wired to a cache manager: in process, and through a real pbkv service
over gRPC (EngineLinkClient for the engine, PbkvClient for the orchestrator)."""

from __future__ import annotations

import time

import pytest

from pbkv.cache_manager.manager import CacheManager, ManagerConfig
from pbkv.engine_adapter.replay import ClientOrchestrator
from pbkv.engine_adapter.sim.attach import attach_link, attach_manager
from pbkv.engine_adapter.sim.engine import EngineConfig
from pbkv.engine_adapter.sim.presets import PRESETS
from pbkv.engine_adapter.sim.replay import ReplayConfig, replay
from pbkv.training.synth import synthesize

PRESET = PRESETS.create("h100-llama8b")


def workload() -> list:
    return synthesize("dynamic", 3, 6, output_tokens=(5, 20), system_tokens=(100, 400))


def test_in_process_manager_sees_what_the_engine_does() -> None:
    engine_ref: list = []
    manager = CacheManager(
        ManagerConfig(policy="pbkv"), clock=lambda: engine_ref[0].now_s if engine_ref else 0.0
    )
    engine = attach_manager(
        manager, EngineConfig(gpu_blocks=400, cpu_blocks=2000, engine_id="sim-a"), PRESET.cost
    )
    engine_ref.append(engine)
    result = replay(engine, workload(), ReplayConfig(concurrency=3), orchestrator=manager)
    manager.check_integrity()
    hits = manager.stats().hits_by_engine["sim-a"]
    # Every lookup and hit the engine counted reached the manager.
    assert (hits.gpu_lookups, hits.gpu_hits, hits.cpu_hits) == (
        result.engine.lookup_blocks,
        result.engine.gpu_hit_blocks,
        result.engine.cpu_hit_blocks,
    )
    assert manager.stats().active_workflows == 0
    assert len(result.workflows) == 6


@pytest.mark.slow
def test_replay_through_a_running_service(tmp_path) -> None:
    from pbkv.service.client import PbkvClient
    from pbkv.service.config import ServiceConfig
    from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
    from pbkv.service.server_thread import ServerThread

    config = ServiceConfig(
        port=0, http_port=None, store_path=tmp_path / "traces.sqlite3", watch_model_s=None
    )
    engine_cfg = EngineConfig(gpu_blocks=400, cpu_blocks=2000, engine_id="sim-remote")
    with ServerThread(config) as server:
        link = EngineLinkClient(
            EngineLinkConfig(
                target=server.target,
                engine_id="sim-remote",
                gpu_blocks=400,
                cpu_blocks=2000,
                tokens_per_block=engine_cfg.tokens_per_block,
            )
        )
        client = PbkvClient(server.target)
        try:
            assert link.wait_connected(10.0)
            engine = attach_link(link, engine_cfg, PRESET.cost)
            orchestrator = ClientOrchestrator(client)
            result = replay(
                engine, workload(), ReplayConfig(concurrency=3), orchestrator=orchestrator
            )
            assert orchestrator.num_errors == 0
            assert link.flush(10.0)
            # Events travel asynchronously; poll (bounded) until the service has them all.
            deadline = time.monotonic() + 10.0
            while True:
                hits = client.stats()["hits_by_engine"].get("sim-remote", {})
                if (
                    hits.get("gpu_lookups") == result.engine.lookup_blocks
                    or time.monotonic() > deadline
                ):
                    break
                time.sleep(0.05)
            assert (hits["gpu_lookups"], hits["gpu_hits"], hits["cpu_hits"]) == (
                result.engine.lookup_blocks,
                result.engine.gpu_hit_blocks,
                result.engine.cpu_hit_blocks,
            )
            assert link.stats().events_dropped == 0
            assert client.stats()["active_workflows"] == 0
        finally:
            client.close()
            link.close()
