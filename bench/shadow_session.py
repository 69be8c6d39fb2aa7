"""The stock half of ``pbkv bench shadow``, in a process of its own (``python -m
pbkv.bench.shadow_session SPEC.json OUT.json``, like ``vllm_session``): stock vLLM (no
connector) publishing KV events over ZMQ, and in the same process a shadow -- subscriber,
``ShadowReplay`` and the cache manager the replay's orchestrator calls go to -- estimating what
pbkv would have saved. One replay from a cold cache; returns one row."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pbkv.bench.vllm_replay import VllmReplayer
from pbkv.bench.vllm_session import SessionSpec
from pbkv.engine_adapter.shadow.replay import session_tag

SYNC_TIMEOUT_S = 5.0  # waiting for one step's batch to cross the socket


class ShadowedReplayer(VllmReplayer):
    """A stock replay whose requests carry the shadow's tags (``session_id``, and vLLM's
    ``kv_cache_report_mode``), and which hands the shadow every batch after each step."""

    def __init__(self, *args: Any, shadow: Any, subscriber: Any, publisher: Any, mode: str):
        super().__init__(*args)
        self.sync_timeouts = 0  # steps whose batch had not come through in SYNC_TIMEOUT_S
        self.shadow, self.subscriber, self.publisher, self.mode = (
            shadow,
            subscriber,
            publisher,
            mode,
        )

    def _step(self, counters: Any) -> list[Any]:
        outputs = super()._step(counters)
        self.sync()
        return outputs

    def sync(self) -> None:
        """Apply every batch the engine has published so far (the publisher thread sends
        after the step; wait until its last sequence number came through)."""
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while time.monotonic() < deadline:
            target = self.publisher._buffer[-1][0] if self.publisher._buffer else -1
            queued = not self.publisher._event_queue.empty()
            for batch in self.subscriber.drain():
                self.shadow.on_batch(batch)
            last = self.subscriber.last_seq
            if not queued and (last if last is not None else -1) >= target:
                return
            time.sleep(0.001)
        self.sync_timeouts += 1

    def _submit(self, request_id: str, wf: Any, step_index: int) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from pbkv.training.materialize import prompt_token_ids

        step = wf.steps[step_index]
        params = SamplingParams(
            max_tokens=max(1, min(step.output_tokens, self.config.max_output_tokens)),
            temperature=0.0,
            ignore_eos=True,
            extra_args={"kv_cache_report_mode": self.mode},
        )
        prompt = prompt_token_ids(wf, step_index, self.config.vocab_size)
        self.engine.add_request(
            request_id,
            TokensPrompt(prompt_token_ids=prompt),
            params,
            session_id=session_tag(wf.workflow_id, step.agent),
        )


def run_shadow(spec: SessionSpec, port: int, mode: str) -> dict[str, Any]:
    from pbkv.bench.vllm_engine import LlmConfig, block_pool_of, build_llm
    from pbkv.bench.vllm_replay import VllmReplayConfig
    from pbkv.bench.vllm_session import cap_outputs, load_workload, make_manager
    from pbkv.engine_adapter.models import tiny_config_of
    from pbkv.engine_adapter.shadow.replay import ShadowReplay
    from pbkv.engine_adapter.shadow.subscriber import KvEventSubscriber, SubscriberConfig
    from pbkv.engine_adapter.sim.presets import PRESETS

    (wspec,) = spec.workloads
    workflows, history = load_workload(wspec)
    workflows = cap_outputs(workflows, spec.max_output_tokens)
    longest = max(s.input_tokens for wf in workflows for s in wf.steps) + spec.max_output_tokens
    llm = build_llm(
        LlmConfig(
            spec.model_dir,
            block_size=spec.block_size,
            kv_cache_memory_bytes=spec.kv_cache_memory_bytes,
            max_model_len=min(
                spec.max_model_len,
                -(-longest // spec.block_size) * spec.block_size + spec.block_size,
            ),
            max_num_seqs=max(8, spec.concurrency * 4),
            dtype=spec.dtype,
            kv_events_endpoint=f"tcp://*:{port}",
            kv_events_replay_endpoint=f"tcp://*:{port + 1}",
        )
    )
    core = llm.llm_engine.engine_core.engine_core
    publisher = core.scheduler.kv_event_publisher
    gpu_blocks = block_pool_of(llm).num_gpu_blocks - 1  # the null block holds nothing
    manager = make_manager(spec, "pbkv", history, workflows)
    shadow = ShadowReplay(
        manager,
        spec.engine_id,
        gpu_blocks=gpu_blocks,
        tokens_per_block=spec.block_size,
        cost=PRESETS.create("vllm-cpu").cost,
        clock=time.monotonic,
        report_mode=mode,
    )
    subscriber = KvEventSubscriber(
        SubscriberConfig(f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}")
    )
    subscriber.start()
    time.sleep(1.0)  # ZMQ's slow joiner: the subscription reaches the publisher first
    tiny = tiny_config_of(spec.model_dir)
    vocab = tiny.vocab_size if tiny else llm.llm_engine.model_config.get_vocab_size()
    replayer = ShadowedReplayer(
        llm,
        manager,
        VllmReplayConfig(
            concurrency=spec.concurrency, max_output_tokens=spec.max_output_tokens, vocab_size=vocab
        ),
        None,
        shadow=shadow,
        subscriber=subscriber,
        publisher=publisher,
        mode=mode,
    )
    try:
        result = replayer.run(workflows)
        replayer.sync()
    finally:
        subscriber.stop()
    return {
        "run": f"stock+shadow ({mode})",
        "gpu_blocks": gpu_blocks,
        **result.summary(),
        "wall_s": round(result.makespan_s, 3),
        "shadow": shadow.estimate(),
        "subscriber": dict(subscriber.counts),
        "sync_timeouts": replayer.sync_timeouts,
        "outputs": {r.request_id: list(r.output_token_ids) for r in result.requests},
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as fh:
        data = json.load(fh)
    row = run_shadow(SessionSpec.from_dict(data["spec"]), data["port"], data["mode"])
    with open(out_path, "w") as fh:
        json.dump(row, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
