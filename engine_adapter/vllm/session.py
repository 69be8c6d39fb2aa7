"""One engine configuration, several workloads: build the engine (stock or with the pbkv
connector), the in-process cache manager and predictor, replay each workload from a cold
cache, return the results. ``python -m pbkv.engine_adapter.vllm.session SPEC.json OUT.json``
runs a spec in a fresh process (vLLM keeps process-global state, so each engine configuration
of a benchmark gets its own process, which also guarantees nothing is left running).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

STOCK_POLICIES = ("stock", "lru")  # plain vLLM, no connector at all


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    name: str
    source: str  # "synth:dynamic", "synth:static" or a trace file path
    num_workflows: int = 8
    seed: int = 0
    history_workflows: int = 64  # predictor training set (synth: other seed; file: --history)
    history_path: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    model_dir: str
    policy: str = "pbkv"
    predictor: str = "markov1"
    host_tier_blocks: int = 0
    kv_cache_memory_bytes: int = 16 * 2**20
    block_size: int = 128
    max_model_len: int = 8192
    concurrency: int = 4
    max_output_tokens: int = 8
    horizon: int = 4
    engine_id: str = "vllm-0"
    link: str = "in-process"  # or "service" (then no in-process manager)
    service_target: str = "127.0.0.1:50151"
    workloads: tuple[WorkloadSpec, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionSpec:
        data = dict(data)
        data["workloads"] = tuple(WorkloadSpec(**w) for w in data.get("workloads", ()))
        return cls(**data)


def load_workload(spec: WorkloadSpec) -> tuple[list[Any], list[Any]]:
    """(workflows to replay, history to train the predictor on)."""
    if spec.source.startswith("synth:"):
        from pbkv.training.synth import synthesize

        kind = spec.source.split(":", 1)[1]
        workflows = synthesize(kind, spec.seed, spec.num_workflows, **spec.knobs)
        history = synthesize(kind, spec.seed + 10_000, spec.history_workflows, **spec.knobs)
        return workflows, history
    from pbkv.training.trace_io import load_workflows

    workflows = load_workflows(spec.source)[: spec.num_workflows]
    history = load_workflows(spec.history_path) if spec.history_path else []
    return workflows, history


def _make_manager(spec: SessionSpec, history: list[Any], future: list[Any]) -> Any:
    from pbkv.cache_manager.manager import CacheManager, ManagerConfig
    from pbkv.predictor.registry import PREDICTORS

    train = history + future if spec.predictor == "oracle" else history
    predictor = PREDICTORS.create(spec.predictor, workflows=train)
    return CacheManager(ManagerConfig(policy=spec.policy, horizon=spec.horizon),
                        predictor=predictor)


def run_session(spec: SessionSpec) -> list[dict[str, Any]]:
    from pbkv.engine_adapter.models import tiny_config_of
    from pbkv.engine_adapter.vllm import link as links
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig
    from pbkv.engine_adapter.vllm.engine import EngineConfig, build_llm, connector_of
    from pbkv.engine_adapter.vllm.replay import ReplayConfig, Replayer

    stock = spec.policy in STOCK_POLICIES
    loaded = [(w, *load_workload(w)) for w in spec.workloads]
    connector_cfg = None
    if not stock:
        connector_cfg = ConnectorConfig(engine_id=spec.engine_id, link=spec.link,
                                        service_target=spec.service_target,
                                        host_tier_blocks=spec.host_tier_blocks)
    llm = build_llm(EngineConfig(spec.model_dir, block_size=spec.block_size,
                                 kv_cache_memory_bytes=spec.kv_cache_memory_bytes,
                                 max_model_len=spec.max_model_len,
                                 max_num_seqs=max(8, spec.concurrency * 4),
                                 connector=connector_cfg))
    tiny = tiny_config_of(spec.model_dir)
    vocab = tiny.vocab_size if tiny else llm.llm_engine.model_config.get_vocab_size()
    connector = connector_of(llm)
    results = []
    for wspec, workflows, history in loaded:
        manager = None
        if not stock and spec.link == "in-process":
            manager = _make_manager(spec, history, workflows)
            link = links.ManagerLink(manager, spec.engine_id)
            links.IN_PROCESS_LINKS[spec.engine_id] = link
            connector.set_link(link)
            manager.attach_engine(spec.engine_id,
                                  gpu_blocks=connector.pool.num_gpu_blocks - 1,
                                  cpu_blocks=spec.host_tier_blocks,
                                  tokens_per_block=spec.block_size)
        if connector is not None:
            connector.reset_host_tier()
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset the prefix cache between workloads")
        replayer = Replayer(llm, manager, ReplayConfig(
            concurrency=spec.concurrency, max_output_tokens=spec.max_output_tokens,
            vocab_size=vocab), connector=connector)
        result = replayer.run(workflows, label=f"{spec.policy}/{wspec.name}")
        row = {"workload": wspec.name, "policy": spec.policy, "predictor": spec.predictor,
               "host_tier_blocks": spec.host_tier_blocks,
               "gpu_blocks": (connector.pool.num_gpu_blocks - 1) if connector else None,
               **result.summary()}
        if manager is not None:
            stats = manager.stats()
            row["manager"] = stats.to_dict() if hasattr(stats, "to_dict") else asdict(stats)
        if connector is not None:
            row["connector"] = asdict(connector.stats)
        row["outputs"] = result.outputs
        results.append(row)
    return results


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = SessionSpec.from_dict(json.load(fh))
    rows = run_session(spec)
    with open(out_path, "w") as fh:
        json.dump(rows, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
