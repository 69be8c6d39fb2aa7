"""``vllm serve`` (vLLM's OpenAI-compatible server, V1 multiprocessing: API server, engine core
and worker in three processes) with the pbkv connector attached to a real ``pbkv serve`` over
gRPC, driven by the real ``openai`` client. See docs/deploy.md.

One server pair for the module (start-up is the slow part: the tiny model's ``vllm serve``
took 50-56 s to a healthy ``/health`` on the idle 2-core test machine, ~10 s for ``pbkv
serve``; START_TIMEOUT_S bounds it at 420 s). The module took 2.4 min idle, 4.6 min at load
average 25. The tests run in file order and each reads the
service's state as a difference from where it started; the last one kills ``pbkv serve``.

KV cache: 2 MiB of the default tiny model (1 KiB per token) in 32-token blocks. Completion
prompts are token ids of whole blocks and ``max_tokens=1``, so a request leaves no partial
block; vLLM recomputes a prompt's last token, so a full prefix hit on an n-block prompt is
(n - 1) blocks. Chat requests go through the tiny model's byte-level tokenizer and template.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ENGINE_ID = "serve-e2e"
BLOCK = 32
KV_BYTES = 2 * 2**20
VOCAB = 4096
APP = "e2e-app"


def prompt(seed: int, num_blocks: int) -> list[int]:
    """``num_blocks`` whole blocks of token ids, distinct per seed from the first token on."""
    return [(i * 7919 + seed * 104729) % (VOCAB - 16) + 16 for i in range(num_blocks * BLOCK)]


@dataclass
class Stack:
    client: Any  # openai.OpenAI on the vllm serve
    model: str
    orch: Any  # PbkvClient on the pbkv serve (orchestrator and operator calls)
    pbkv: Any  # serve_process.PbkvServe
    server: Any  # vllm_serve_support.VllmServe


def complete(stack: Stack, tokens: list[int], tags: tuple[str, str] | None = None, **body):
    """One completion of ``tokens`` (1 token, greedy), tagged with (workflow, agent) if given."""
    from pbkv.engine_adapter.vllm.tags import openai_extra_body

    extra_body = openai_extra_body(*tags) if tags else body.pop("extra_body", None)
    resp = stack.client.completions.create(
        model=stack.model,
        prompt=tokens,
        max_tokens=1,
        temperature=0.0,
        extra_body=extra_body,
        **body,
    )
    assert resp.usage.prompt_tokens == len(tokens) and resp.usage.completion_tokens == 1
    return resp


def cached_blocks(resp) -> int:
    return resp.usage.prompt_tokens_details.cached_tokens // BLOCK


def settled(orch, until=lambda stats: True, timeout_s: float = 60.0) -> dict:
    """The service's stats once ``until(stats)`` holds and the engine's events have stopped
    arriving (four reads 0.3 s apart agree on events received, plans sent and blocks cached)."""
    deadline = time.monotonic() + timeout_s
    last, same, stats = None, 0, None
    while time.monotonic() < deadline:
        stats = orch.stats()
        svc = stats["service"]
        key = (svc["engine_events"], svc["plans_sent"], stats["gpu_blocks_cached"])
        same = same + 1 if key == last and until(stats) else 0
        if same == 3:
            return stats
        last = key
        time.sleep(0.3)
    raise AssertionError(f"the service's state did not settle in {timeout_s} s: {stats}")


def hits(stats: dict, dimension: str, key: str) -> tuple[int, int]:
    h = stats[dimension].get(key, {"gpu_lookups": 0, "gpu_hits": 0})
    return h["gpu_lookups"], h["gpu_hits"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vllm_available):
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    config = TinyModelConfig(vocab_size=VOCAB, tokenizer=True)  # chat requests too
    return str(make_tiny(tmp_path_factory.mktemp("tiny"), config))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_dir):
    """vLLM first, pbkv second: vLLM starts and serves without pbkv, and its connector attaches
    once ``pbkv serve`` is up on the address it was given. Auth is on, as in a deployment: the
    connector holds an ``engine`` token (from a file), the orchestrator an ``operator`` one."""
    from serve_process import PbkvServe
    from vllm_serve_support import VllmServe, VllmServeConfig, free_port

    from pbkv.engine_adapter.vllm.connector import ConnectorConfig
    from pbkv.service.client import PbkvClient

    work = tmp_path_factory.mktemp("deploy")
    (work / "tokens.jsonl").write_text(
        '{"token": "engine-t", "role": "engine"}\n{"token": "op-t", "role": "operator"}\n'
    )
    (work / "engine.token").write_text("engine-t\n")
    pbkv_port = free_port()
    connector = ConnectorConfig(
        engine_id=ENGINE_ID,
        link="service",
        service_target=f"127.0.0.1:{pbkv_port}",
        service_token_file=str(work / "engine.token"),
    )
    config = VllmServeConfig(
        model_dir,
        log_path=work / "vllm-serve.log",
        connector=connector,
        kv_cache_memory_bytes=KV_BYTES,
        max_model_len=2016,  # 63 usable blocks
        skip_tokenizer_init=False,
    )
    with VllmServe(config) as server:
        client = server.openai_client()
        complete_without_pbkv = client.completions.create(
            model=model_dir, prompt=prompt(0, 2), max_tokens=1, temperature=0.0
        )
        assert complete_without_pbkv.usage.completion_tokens == 1
        pbkv = PbkvServe(
            work, "--policy", "pbkv", "--token-file", str(work / "tokens.jsonl"), port=pbkv_port
        )
        try:
            with PbkvClient(pbkv.target, token="op-t", timeout_s=10.0) as orch:
                yield Stack(client, model_dir, orch, pbkv, server)
        finally:
            pbkv.kill()


def test_the_connector_attaches_and_untagged_requests_are_served_as_usual(stack):
    orch, server = stack.orch, stack.server
    roles = server.process_pids()
    # The premise: the scheduler-side connector runs in an engine-core process of its own.
    assert roles["APIServer"] == {server.pid}
    assert len(roles["EngineCore"]) == len(roles["Worker"]) == 1
    assert len(roles["APIServer"] | roles["EngineCore"] | roles["Worker"]) == 3

    deadline = time.monotonic() + 30  # the link retries with backoff up to 5 s
    while ENGINE_ID not in orch.stats()["engines"]:
        assert time.monotonic() < deadline, "the connector did not attach to pbkv serve"
        time.sleep(0.2)
    before = settled(orch)
    assert before["service"]["attached_streams"] == 1
    tokens = prompt(1, 4)
    assert cached_blocks(complete(stack, tokens)) == 0
    assert cached_blocks(complete(stack, tokens)) == 3  # vLLM's prefix cache, as without pbkv
    after = settled(orch, until=lambda s: s["gpu_blocks_cached"] >= before["gpu_blocks_cached"] + 4)
    end, start = (
        hits(after, "hits_by_agent", "(untagged)"),
        hits(before, "hits_by_agent", "(untagged)"),
    )
    # pbkv saw both prompts (4 blocks each) and the second one's 3-block hit
    assert (end[0] - start[0], end[1] - start[1]) == (8, 3)
    assert after["gpu_blocks_cached"] - before["gpu_blocks_cached"] == 4
    assert after["service"]["engine_event_errors"] == 0


def test_tags_reach_pbkv_through_the_openai_api_and_plans_flow_back(stack):
    import openai

    from pbkv.engine_adapter.vllm.tags import make_extra_args

    orch = stack.orch
    # vLLM 0.32 takes only flat string/number values in vllm_xargs: the nested form is a 400.
    with pytest.raises(openai.BadRequestError):
        complete(stack, prompt(2, 2), extra_body={"vllm_xargs": make_extra_args("wf-a", "x")})

    orch.start_workflow("wf-a", APP)
    orch.step_started("wf-a", "Planner")
    before = settled(orch)
    tokens = prompt(3, 6)
    assert cached_blocks(complete(stack, tokens, tags=("wf-a", "Planner"))) == 0
    assert cached_blocks(complete(stack, tokens, tags=("wf-a", "Planner"))) == 5
    orch.step_finished("wf-a", "Planner")
    after = settled(orch, until=lambda s: "Planner" in s["hits_by_agent"])
    assert hits(after, "hits_by_agent", "Planner") == (12, 5)
    assert hits(after, "hits_by_app", APP) == (12, 5)  # joined to the orchestrator's workflow
    assert after["gpu_blocks_cached"] - before["gpu_blocks_cached"] == 6
    assert after["service"]["plans_sent"] > before["service"]["plans_sent"]
    assert after["plans_built"] > before["plans_built"]

    # Chat completions carry the tags the same way (the rendered prompt is byte tokens).
    from pbkv.engine_adapter.vllm.tags import openai_extra_body

    messages = [
        {"role": "system", "content": "You review code. " * 12},
        {"role": "user", "content": "Review the patch."},
    ]
    chats = [
        stack.client.chat.completions.create(
            model=stack.model,
            messages=messages,
            max_tokens=1,
            temperature=0.0,
            extra_body=openai_extra_body("wf-a", "Reviewer"),
        )
        for _ in range(2)
    ]
    full_blocks = chats[0].usage.prompt_tokens // BLOCK
    assert full_blocks >= 4 and cached_blocks(chats[0]) == 0
    assert cached_blocks(chats[1]) == (chats[0].usage.prompt_tokens - 1) // BLOCK
    reviewed = settled(orch, until=lambda s: "Reviewer" in s["hits_by_agent"])
    assert hits(reviewed, "hits_by_agent", "Reviewer") == (2 * full_blocks, cached_blocks(chats[1]))
    orch.end_workflow("wf-a")


def test_the_engine_evicts_in_the_order_pbkv_planned(stack):
    """``keep`` (workflow wf-keep, its Planner step still running: its next call extends this
    prompt) is cached before ``done`` (workflow wf-done, then ended) and an untagged ``nudge``,
    so vLLM's LRU would evict ``keep`` first. A flood then takes every never-used block and all
    cached ones but 8: under pbkv's plan ``keep`` is the 8 kept and everything else goes;
    under LRU (a plan ignored) the 8 newest, ``done``'s and ``nudge``'s, would stay instead."""
    from pbkv.engine_adapter.models import TinyModelConfig

    orch = stack.orch
    usable = KV_BYTES // (BLOCK * TinyModelConfig().kv_bytes_per_token) - 1  # minus null block
    keep, done, nudge = prompt(10, 8), prompt(11, 8), prompt(12, 2)
    orch.start_workflow("wf-keep", APP)
    orch.step_started("wf-keep", "Planner")
    cached = settled(orch)["gpu_blocks_cached"]
    complete(stack, keep, tags=("wf-keep", "Planner"))
    orch.start_workflow("wf-done", APP)
    orch.step_started("wf-done", "Coder")
    complete(stack, done, tags=("wf-done", "Coder"))
    orch.step_finished("wf-done", "Coder")
    orch.end_workflow("wf-done")
    complete(stack, nudge)  # engine events after the end: the service plans with it
    settled(orch, until=lambda stats: stats["gpu_blocks_cached"] == cached + 18)
    flood = prompt(13, usable - 8)  # every block but 8 (nothing else runs)
    assert cached_blocks(complete(stack, flood)) == 0

    assert cached_blocks(complete(stack, keep, tags=("wf-keep", "Planner"))) == 7
    assert cached_blocks(complete(stack, done)) == 0
    assert cached_blocks(complete(stack, nudge)) == 0
    orch.step_finished("wf-keep", "Planner")
    orch.end_workflow("wf-keep")


def test_vllm_keeps_serving_after_pbkv_serve_is_killed(stack):
    stack.pbkv.kill()  # SIGKILL: no goodbye on the Attach stream
    tokens = prompt(20, 4)
    assert cached_blocks(complete(stack, tokens, tags=("wf-gone", "Coder"))) == 0
    assert cached_blocks(complete(stack, tokens)) == 3  # plain LRU prefix caching goes on
    for seed in range(21, 25):
        complete(stack, prompt(seed, 10), tags=("wf-gone", "Reviewer"))
    assert stack.server.proc.poll() is None
