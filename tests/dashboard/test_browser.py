"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright), fed by
real parts: two ``CacheManager``s (pbkv with a trained markov1 predictor, and the LRU baseline)
each driving the simulated engine through a replay of synthetic dynamic workflows. Every
figure the page shows is checked against ``/metrics`` and against the manager itself; a
screenshot is saved under ``artifacts/``. The service's own dashboard: test_browser_service.py."""

from __future__ import annotations

import json

import pytest
from browser_page import dashboard_page, fmt, mismatches, sample_key, screenshot
from sim_feed import CONCURRENCY, GPU_BLOCKS, Replay

from pbkv.dashboard.http import DashboardServer, ThreadedDashboard

pytestmark = pytest.mark.slow

CHUNK = 5  # workflows replayed between two history samples


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
                "gpu_blocks": GPU_BLOCKS,
                "concurrency": CONCURRENCY,
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
            shot = screenshot(page, "dashboard.png")
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
            screenshot(page, "bench-report.png")

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
        f"screenshot {shot}"
    )
