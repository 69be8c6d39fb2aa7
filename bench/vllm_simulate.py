"""The simulator with ``pbkv bench vllm``'s own set-up: the same workflows, predictor and cache
manager a run uses (``vllm_session.make_manager``), the adapter's mechanisms
(``prefetch_needs_parent``, the connector's write-throughs per step), at the same block count
and batch budget. ``bench vllm``'s calibration replays each measured run with it; run as
``python -m pbkv.bench.vllm_simulate`` it compares host-tier orders without an engine::

    python -m pbkv.bench.vllm_simulate --seeds 0,1,2,3 --host-orders chain,value

prints, per seed, the recomputed prompt tokens of ``lru-offload+host`` and of ``pbkv+host``
under each ``PbkvPolicyConfig.host_order``, and LRU / pbkv (docs/vllm-adapter.md).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import Any


def simulate(
    spec: Any,
    run: Any,
    workflows: list[Any],
    history: list[Any],
    cost: Any,
    *,
    gpu_blocks: int,
    max_batch_tokens: int,
) -> Any:
    """Replay ``workflows`` in the simulator as ``run`` (a ``SessionRun``) of ``spec`` would
    on vLLM; returns the replay's result."""
    from pbkv.bench.vllm_session import make_manager
    from pbkv.engine_adapter.sim.attach import attach_manager
    from pbkv.engine_adapter.sim.engine import EngineConfig
    from pbkv.engine_adapter.sim.replay import PromptCache, ReplayConfig, replay
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig

    vocab = 4096
    engine_ref: list[Any] = []
    manager = make_manager(
        spec,
        run.policy,
        history,
        workflows,
        clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
        host_tier_blocks=run.host_tier_blocks,
    )
    engine = attach_manager(
        manager,
        EngineConfig(
            gpu_blocks=gpu_blocks,
            cpu_blocks=run.host_tier_blocks,
            tokens_per_block=spec.block_size,
            max_batch_seqs=max(8, spec.concurrency * 4),
            prefetch_needs_parent=True,
            write_through_per_iteration=ConnectorConfig().max_saves_per_step,
            max_batch_tokens=max_batch_tokens,
        ),
        cost,
    )
    engine_ref.append(engine)
    return replay(
        engine,
        workflows,
        ReplayConfig(concurrency=spec.concurrency, vocab_size=vocab),
        orchestrator=manager,
        prompts=PromptCache(vocab, spec.block_size),
    )


def recomputed_tokens(
    spec: Any, policy: str, workflows: list[Any], history: list[Any], cost: Any, args: Any
) -> int:
    """Prompt tokens ``policy`` with a host tier recomputes in the simulator."""
    from pbkv.bench.vllm_session import SessionRun

    run = SessionRun(policy, policy, args.host_tier_blocks)
    sim = simulate(
        spec,
        run,
        workflows,
        history,
        cost,
        gpu_blocks=args.gpu_blocks,
        max_batch_tokens=args.max_batch_tokens,
    )
    return sim.summary()["recomputed_tokens"]


def main(argv: list[str] | None = None) -> None:
    from pbkv.bench.vllm_process import BLOCK_SIZE, DEFAULT_KNOBS
    from pbkv.bench.vllm_session import SessionSpec, WorkloadSpec, cap_outputs, load_workload
    from pbkv.engine_adapter.sim.presets import PRESETS

    parser = argparse.ArgumentParser(prog="python -m pbkv.bench.vllm_simulate")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--host-orders", default="chain,value", help="PbkvPolicyConfig.host_order")
    parser.add_argument("--num-workflows", type=int, default=20)
    parser.add_argument("--history-workflows", type=int, default=100)
    parser.add_argument("--gpu-blocks", type=int, default=150)
    parser.add_argument("--host-tier-blocks", type=int, default=300)
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="vLLM CPU's default")
    args = parser.parse_args(argv)
    orders = args.host_orders.split(",")
    cost = PRESETS.create("vllm-cpu").cost
    base = SessionSpec(model_dir="", predictor="fused", concurrency=6, block_size=BLOCK_SIZE)
    ratios: dict[str, list[float]] = {o: [] for o in orders}
    for seed in (int(s) for s in args.seeds.split(",")):
        knobs = dict(DEFAULT_KNOBS["dynamic"])
        w = WorkloadSpec(
            "dynamic",
            "synth:dynamic",
            args.num_workflows,
            seed,
            args.history_workflows,
            knobs=knobs,
        )
        workflows, history = load_workload(w)
        workflows = cap_outputs(workflows, base.max_output_tokens)
        lru = recomputed_tokens(base, "lru-offload", workflows, history, cost, args)
        line = [f"seed {seed}: lru-offload+host {lru:,}"]
        for order in orders:
            spec = replace(base, host_order=order)
            pbkv = recomputed_tokens(spec, "pbkv", workflows, history, cost, args)
            ratios[order].append(lru / pbkv)
            line.append(f"pbkv+host ({order}) {pbkv:,} = {lru / pbkv:.3f}")
        print(", ".join(line), flush=True)
    for order, values in ratios.items():
        print(f"LRU / pbkv+host ({order}): median {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
