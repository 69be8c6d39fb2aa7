"""``pbkv bench shadow``: its bookkeeping, and one small run end to end (two real vLLM engine
processes: stock with KV events + the shadow, and the pbkv connector)."""

from __future__ import annotations

import json

import pytest

from pbkv.bench.shadow import compare, same_position


def test_the_error_is_the_estimate_against_the_connectors_measured_savings():
    shadow = {
        "saved_tokens": 900,
        "lru_hit_rate": 0.3,
        "pbkv_hit_rate": 0.35,
        "calibration_error": 0.01,
        "saved_prefill_s": 0.5,
    }
    stock = {
        "gpu_blocks": 150,
        "cached_tokens": 1000,
        "hit_rate": 0.3,
        "engine_step_s": 10.0,
        "shadow": shadow,
        "subscriber": {"lost_batches": 0},
        "outputs": {"r1": [1, 2]},
    }
    connector = {
        "cached_tokens": 2000,
        "hit_rate": 0.4,
        "engine_step_s": 9.0,
        "outputs": {"r1": [1, 2]},
    }
    r = compare(stock, connector)
    assert r["measured_saved_tokens"] == 1000 and r["estimated_saved_tokens"] == 900
    assert r["error"] == pytest.approx(0.1) and r["met"]
    assert r["same_schedule_outputs"] and r["measured_engine_step_s_saved"] == 1.0
    assert r["same_finish_position"] == 1.0
    r = compare(stock, {**connector, "cached_tokens": 1000})
    assert r["error"] is None and not r["met"]  # nothing measured: no ratio


def test_the_finish_order_tells_whether_the_connector_changed_the_schedule():
    # Outputs are kept in the order the requests finished.
    assert (
        same_position({"a": [], "b": [], "c": [], "d": []}, {"a": [], "c": [], "b": [], "d": []})
        == 0.5
    )
    assert same_position({}, {}) is None


@pytest.mark.slow
def test_bench_shadow_runs_both_engines_on_one_schedule(tmp_path, vllm_available, capsys):
    from pbkv.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "bench", "shadow", "--num-workflows", "3", "--history-workflows", "10",
            "--kv-blocks", "60", "--zmq-port", "5612", "--out", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    r = json.loads((out / "bench-shadow.json").read_text())
    assert r["same_schedule_outputs"]  # greedy decoding, same schedule: same tokens out
    assert r["gpu_blocks"] == 60
    assert (
        r["measured_saved_tokens"] == r["connector"]["cached_tokens"] - r["stock"]["cached_tokens"]
    )
    assert r["estimated_saved_tokens"] == r["stock"]["shadow"]["saved_tokens"]
    assert r["lost_batches"] == 0 and r["stock"]["subscriber"]["malformed"] == 0
    # The simulated LRU pool reproduces what the stock engine computed, within 5%.
    assert r["calibration_error"] <= 0.05
    assert "error of the estimate" in capsys.readouterr().out
