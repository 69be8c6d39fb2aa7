"""Greedy outputs through the adapter, under every cache policy (with and without the host
tier), are identical to plain vLLM's on the same workflows, at the benchmark's concurrency (6).
The model is the tiny Llama trained as ``pbkv bench vllm`` trains it (wide greedy margins: a
random model's near-tied logits flip on the ~1e-5 differences between a prefix-hit prefill and
a full one). Each engine runs in its own process (``session``), as the benchmark runs them;
the KV cache is small enough to force eviction."""

from __future__ import annotations

import pytest

from pbkv.bench.vllm_process import run_in_process
from pbkv.bench.vllm_session import SessionRun, SessionSpec, WorkloadSpec

pytestmark = pytest.mark.slow

KNOBS = {
    "system_tokens": [256, 640],
    "preamble_tokens": 64,
    "new_tokens": [16, 64],
    "output_tokens": [4, 8],
    "history_growth": 0.5,
    "max_fanout": 2,
    "max_loops": 2,
    "num_apps": 2,
}


def run_session(spec: SessionSpec, tmp_path) -> list[dict]:
    """One engine session in its own process, as ``pbkv bench vllm`` runs it."""
    return run_in_process(spec, tmp_path, timeout_s=600)


def test_every_policy_gives_plain_vllm_greedy_outputs(tmp_path, vllm_available):
    from pbkv.bench.vllm import DEFAULT_TRAIN_STEPS
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    model = str(make_tiny(tmp_path / "tiny", TinyModelConfig(), train_steps=DEFAULT_TRAIN_STEPS))
    workload = WorkloadSpec(
        "dynamic", "synth:dynamic", num_workflows=8, seed=3, history_workflows=40, knobs=KNOBS
    )
    common = dict(
        model_dir=model,
        workloads=(workload,),
        kv_cache_memory_bytes=3 * 2**20,
        concurrency=6,
        max_output_tokens=6,
        warmup=False,
    )
    stock = run_session(
        SessionSpec(runs=(SessionRun("stock", "stock"),), with_connector=False, **common),
        tmp_path,
    )
    runs = (
        SessionRun("lru", "lru"),
        SessionRun("pbkv", "pbkv"),
        SessionRun("pbkv+host", "pbkv", host_tier_blocks=64),
        SessionRun("lru-offload+host", "lru-offload", host_tier_blocks=64),
        SessionRun("kvflow+host", "kvflow", host_tier_blocks=64),
        SessionRun("oracle+host", "oracle", host_tier_blocks=64),
    )
    adapted = run_session(SessionSpec(runs=runs, **common), tmp_path)
    reference = stock[0]["outputs"]
    assert len(reference) == stock[0]["requests"] > 10
    for row in adapted:
        assert row["outputs"] == reference, row["run"]
    # The cache really was under pressure (so policies had choices to make) ...
    assert stock[0]["hit_rate"] < 0.9
    # ... and the host tier served some blocks in at least one run.
    assert sum(r["host_hit_blocks"] for r in adapted) > 0
