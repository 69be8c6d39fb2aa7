"""The demo's dashboard mid-run, in a real browser: the pbkv vs LRU comparison is taken at
equal progress (LRU as it stood after as many finished workflows as pbkv has finished), and
the kept blocks are listed while workflows run.

The demo's own code runs: ``pbkv.bench.demo.run_in_process`` replays LRU and records its
``BaselineCurve``; ``run_via_service`` replays pbkv through the service (gRPC + EngineLink),
publishing the baseline at pbkv's progress. The progress bar it is given pauses the replay
after half the workflows, and the page is read then."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest
from browser_page import dashboard_page, fmt, mismatches

from pbkv.bench.progress import Bar

pytestmark = pytest.mark.slow


class PausingBar(Bar):
    """The demo's progress bar, except that the replay waits at ``pause_at`` finished
    workflows until the test has read the page."""

    def __init__(self, pause_at: int) -> None:
        super().__init__(None)
        self.done, self.pause_at = 0, pause_at
        self.paused, self.resume = threading.Event(), threading.Event()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done == self.pause_at:
            self.paused.set()
            assert self.resume.wait(300), "the test never resumed the replay"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rate(stats: dict, tier: str) -> float | None:
    hits = stats["hits"]
    return hits[f"{tier}_hits"] / hits["gpu_lookups"] if hits["gpu_lookups"] else None


def test_demo_dashboard_compares_at_equal_progress(chromium_path, tmp_path):
    from pbkv.bench.demo import run_in_process, setup_engine, train_model
    from pbkv.bench.demo_baseline import BaselineCurve
    from pbkv.bench.demo_service import run_via_service
    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache
    from pbkv.training.synth import synthesize

    workflows = synthesize("dynamic", 3, 40)
    train, replay = workflows[:24], workflows[24:]
    model, _ = train_model(train, tmp_path / "model", 0)
    preset = PRESETS.create("h100-llama8b")
    prompts = PromptCache(32_000, preset.tokens_per_block)
    setup = setup_engine(replay, preset, prompts, 0.05, 8)
    curve = BaselineCurve(len(replay))
    run_in_process("lru", replay, model, preset, prompts, setup, curve=curve)
    assert curve.complete

    half = len(replay) // 2
    bar = PausingBar(half)
    http_port = _free_port()
    args = argparse.Namespace(
        out=tmp_path, port=0, http_port=http_port, keep_serving=False, linger_s=0.0
    )
    finished: list = []
    failures: list[BaseException] = []

    def pbkv_run() -> None:
        try:
            run_via_service(
                replay,
                model,
                preset,
                prompts,
                setup,
                args,
                curve,
                bar,
                lambda row, stats: finished.append((row, stats)),
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            bar.paused.set()

    thread = threading.Thread(target=pbkv_run, daemon=True)
    thread.start()
    try:
        assert bar.paused.wait(600) and not failures, failures
        url = f"http://127.0.0.1:{http_port}/"
        with dashboard_page(tmp_path, chromium_path, url) as (page, errors, figures, metrics):
            shown = {name: page.text_content(f"#{name}") for name in ("lru-gpu", "lru-done")}
            visible = {
                name: page.is_visible(f"#{name}") for name in ("lru-progress", "lru-unequal")
            }
            progress_text = " ".join(page.text_content("#lru-progress").split())
            kept_rows = page.eval_on_selector_all(
                "#kept-table tbody tr td[colspan]", "tds => tds.length"
            )
            kept_total = page.eval_on_selector_all("#kept-table tbody tr", "rs => rs.length")
    finally:
        bar.resume.set()
        thread.join(600)
    assert not failures, failures
    assert errors == [] and mismatches(figures, metrics) == []
    # the baseline shown is LRU after `half` finished workflows, not its whole run
    at_half, whole = curve.at(half), curve.at(len(replay))
    assert _rate(at_half, "gpu") != _rate(whole, "gpu")
    assert shown == {"lru-gpu": fmt(_rate(at_half, "gpu"), "pct"), "lru-done": str(half)}
    assert visible == {"lru-progress": True, "lru-unequal": False}
    assert (
        f"finished {half} workflows, the number pbkv has finished now ({half} of {len(replay)})"
    ) in progress_text
    # while workflows run, the kept blocks are listed (not "none yet")
    assert kept_rows == 0 and kept_total > 0
    # and at the end the baseline is LRU's whole run, beside pbkv's whole run
    ((row, stats),) = finished
    assert stats["baseline_lru"]["workflows_done"] == stats["workflows_done"] == len(replay)
    assert stats["baseline_lru"]["hits"] == whole["hits"]
