"""One engine configuration, several workloads: build the engine (stock or with the pbkv
connector), the in-process cache manager and predictor, replay each workload from a cold
cache, return the results. ``python -m pbkv.bench.vllm_session SPEC.json OUT.json``
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
class SessionRun:
    """One configuration to replay every workload with: ``policy`` is ``stock``/``lru`` (vLLM's
    own LRU; in an engine that has the connector, the connector is switched to a null link) or a
    cache-manager policy; ``host_tier_blocks`` sizes the host tier (0: none);
    ``exclusive_margin_blocks`` is the connector's (``ConnectorConfig``; 0: the tier keeps
    copies of GPU blocks)."""

    label: str
    policy: str = "pbkv"
    host_tier_blocks: int = 0
    exclusive_margin_blocks: int = 0


@dataclass(frozen=True, slots=True)
class SessionSpec:
    model_dir: str
    runs: tuple[SessionRun, ...] = (SessionRun("pbkv"),)
    with_connector: bool = True  # False: stock vLLM (every run must be stock/lru)
    predictor: str = "markov1"
    kv_cache_memory_bytes: int = 16 * 2**20
    block_size: int = 128
    max_model_len: int = 8192
    dtype: str = "auto"
    concurrency: int = 4
    max_output_tokens: int = 8
    horizon: int = 4
    host_order: str = "chain"  # pbkv's host drop order (PbkvPolicyConfig.host_order)
    repeats: int = 1  # rounds over (workload x run), interleaved so drift hits all alike
    warmup: bool = True  # one unrecorded replay first (first-call kernel set-up)
    engine_id: str = "vllm-0"
    link: str = "in-process"  # or "service" (then no in-process manager)
    service_target: str = "127.0.0.1:50151"
    max_host_tier_blocks: int = 0  # host tier size the engine is built with (max over runs)
    log_iterations: bool = False  # record per-step batch shapes and times (calibration)
    workloads: tuple[WorkloadSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.with_connector:
            bad = [r.label for r in self.runs if r.policy not in STOCK_POLICIES]
            if bad:
                raise ValueError(f"runs {bad} need the connector (with_connector=True)")
        if self.repeats <= 0:
            raise ValueError(f"repeats must be positive, got {self.repeats}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionSpec:
        data = dict(data)
        data["workloads"] = tuple(WorkloadSpec(**w) for w in data.get("workloads", ()))
        data["runs"] = tuple(SessionRun(**r) for r in data.get("runs", ()))
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cap_outputs(workflows: list[Any], max_output_tokens: int) -> list[Any]:
    """Workflows whose steps generate at most ``max_output_tokens`` (what the replay asks the
    engine for, so that the simulator, given the same workflows, models the same work)."""
    from dataclasses import replace

    return [
        replace(
            wf,
            steps=tuple(
                replace(s, output_tokens=min(s.output_tokens, max_output_tokens)) for s in wf.steps
            ),
        )
        for wf in workflows
    ]


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


def manager_config(spec: SessionSpec, policy: str, host_tier_blocks: int = 0) -> Any:
    """The manager's configuration for a run. pbkv with a host tier orders that tier by
    value (``host_plan_blocks``: the whole tier), offers every block it ranks for a copy
    (``min_offload_p`` 0: the tier's drop order, not admission, decides what stays) and does
    not prefetch (``transfer_budget_blocks`` 0: on the CPU backend a copy runs inside the step
    whether it is a prefetch or a reload on hit, so a prefetch hides nothing and can only
    waste a GPU block; docs/vllm-adapter.md has the measurements)."""
    from pbkv.cache_manager.manager import ManagerConfig
    from pbkv.cache_manager.planner import PlannerConfig
    from pbkv.cache_manager.policies import PbkvPolicyConfig

    if policy != "pbkv" or host_tier_blocks == 0:
        return ManagerConfig(policy=policy, horizon=spec.horizon)
    return ManagerConfig(
        policy=policy,
        horizon=spec.horizon,
        pbkv=PbkvPolicyConfig(min_offload_p=0.0, host_order=spec.host_order),
        planner=PlannerConfig(host_plan_blocks=host_tier_blocks, transfer_budget_blocks=0),
    )


def make_manager(
    spec: SessionSpec,
    policy: str,
    history: list[Any],
    future: list[Any],
    clock: Any = None,
    host_tier_blocks: int = 0,
) -> Any:
    """The cache manager a run uses (the simulator's calibration builds the same one, with
    the simulated engine's clock)."""
    from pbkv.cache_manager.manager import CacheManager
    from pbkv.predictor.registry import PREDICTORS

    train = history + future if spec.predictor == "oracle" else history
    predictor = PREDICTORS.create(spec.predictor, workflows=train)
    kwargs = {"clock": clock} if clock is not None else {}
    manager = CacheManager(
        manager_config(spec, policy, host_tier_blocks), predictor=predictor, **kwargs
    )
    if policy in ("oracle", "clairvoyant"):
        manager.set_oracle_future(future)
    return manager


def run_session(spec: SessionSpec) -> list[dict[str, Any]]:
    """Replay every (repeat, workload, run) from a cold cache; one row per replay."""
    from pbkv.bench.vllm_engine import LlmConfig, build_llm, connector_of, worker_connector_of
    from pbkv.engine_adapter.models import tiny_config_of
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig

    loaded = []
    for w in spec.workloads:
        workflows, history = load_workload(w)
        loaded.append((w, cap_outputs(workflows, spec.max_output_tokens), history))
    connector_cfg = None
    if spec.with_connector:
        host = max([spec.max_host_tier_blocks, *(r.host_tier_blocks for r in spec.runs)])
        connector_cfg = ConnectorConfig(
            engine_id=spec.engine_id,
            link=spec.link,
            service_target=spec.service_target,
            host_tier_blocks=host,
        )
    longest = (
        max((s.input_tokens for _, wfs, _ in loaded for wf in wfs for s in wf.steps), default=0)
        + spec.max_output_tokens
    )
    max_model_len = min(
        spec.max_model_len, -(-longest // spec.block_size) * spec.block_size + spec.block_size
    )
    llm = build_llm(
        LlmConfig(
            spec.model_dir,
            block_size=spec.block_size,
            kv_cache_memory_bytes=spec.kv_cache_memory_bytes,
            max_model_len=max_model_len,
            max_num_seqs=max(8, spec.concurrency * 4),
            dtype=spec.dtype,
            connector=connector_cfg,
        )
    )
    tiny = tiny_config_of(spec.model_dir)
    vocab = tiny.vocab_size if tiny else llm.llm_engine.model_config.get_vocab_size()
    connector = connector_of(llm)
    worker = worker_connector_of(llm)
    rows = []
    if spec.warmup:  # every workload once, unrecorded: first-seen shapes set up kernels
        for wspec, workflows, history in loaded:
            _replay_one(
                spec, llm, connector, worker, vocab, spec.runs[0], wspec, workflows, history
            )
    for repeat in range(spec.repeats):
        # Rotate the run order each repeat so no run is always first after a cache reset.
        shift = repeat % len(spec.runs)
        order = spec.runs[shift:] + spec.runs[:shift]
        for wspec, workflows, history in loaded:
            for run in order:
                row = _replay_one(
                    spec, llm, connector, worker, vocab, run, wspec, workflows, history
                )
                rows.append({"repeat": repeat, **row})
    return rows


def _replay_one(
    spec: SessionSpec,
    llm: Any,
    connector: Any,
    worker: Any,
    vocab: int,
    run: SessionRun,
    wspec: WorkloadSpec,
    workflows: list[Any],
    history: list[Any],
) -> dict[str, Any]:
    from pbkv.bench.vllm_replay import VllmReplayConfig, VllmReplayer
    from pbkv.engine_adapter.vllm import links

    manager = orchestrator = link = None
    if connector is not None:
        # told to the previous run's link
        connector.reset_host_tier(run.host_tier_blocks, run.exclusive_margin_blocks)
        if run.policy in STOCK_POLICIES:
            connector.set_link(links.NullLink())
        elif spec.link == "in-process":
            orchestrator = manager = make_manager(
                spec, run.policy, history, workflows, host_tier_blocks=run.host_tier_blocks
            )
            manager.attach_engine(
                spec.engine_id,
                gpu_blocks=connector.pool.num_gpu_blocks - 1,
                cpu_blocks=run.host_tier_blocks,
                tokens_per_block=spec.block_size,
            )
            link = links.ManagerLink(manager, spec.engine_id)
            links.IN_PROCESS_LINKS[spec.engine_id] = link
            connector.set_link(link)
        else:  # the service plans; the connector's ServiceLink already reports to it
            from pbkv.engine_adapter.replay import ClientOrchestrator
            from pbkv.service.client import PbkvClient

            orchestrator = ClientOrchestrator(PbkvClient(spec.service_target))
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset the prefix cache between replays")
    if connector is not None:
        connector.step_log = [] if spec.log_iterations else None
    copies_before = asdict(worker.store.stats) if worker is not None else None
    stats_before = asdict(connector.stats) if connector is not None else None
    replayer = VllmReplayer(
        llm,
        orchestrator,
        VllmReplayConfig(
            concurrency=spec.concurrency, max_output_tokens=spec.max_output_tokens, vocab_size=vocab
        ),
        connector=connector,
    )
    result = replayer.run(workflows)
    row = {
        "workload": wspec.name,
        "run": run.label,
        "policy": run.policy,
        "predictor": spec.predictor,
        "host_tier_blocks": run.host_tier_blocks,
        "exclusive_margin_blocks": run.exclusive_margin_blocks,
        "gpu_blocks": (connector.pool.num_gpu_blocks - 1) if connector else None,
        "with_connector": connector is not None,
        "max_num_batched_tokens": (
            llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        ),
        **result.summary(),
        **_wall_figures(result, f"{run.label}/{wspec.name}"),
    }
    if manager is not None:
        row["manager"] = manager.stats().to_dict()
    if link is not None:  # events or plans the in-process manager refused (0: in step)
        row["link_errors"] = link.num_errors
    elif orchestrator is not None:
        row["orchestrator_errors"] = orchestrator.num_errors
    if connector is not None:  # this replay's share of the connector's counters
        row["connector"] = _delta(stats_before, asdict(connector.stats))
        # what the host tier holds at the end (the manager's cpu_blocks_cached should agree)
        row["host_tier_held_blocks"] = len(connector.applier.host)
    if copies_before is not None:
        row["host_copies"] = _delta(copies_before, asdict(worker.store.stats))
    row["outputs"] = {r.request_id: list(r.output_token_ids) for r in result.requests}
    row["cached"] = {r.request_id: r.cached_tokens for r in result.requests}
    if spec.log_iterations:
        row["iterations"] = result.engine.iterations
    return row


def _wall_figures(result: Any, label: str) -> dict[str, Any]:
    """A real engine's per-workflow wall and CPU figures (rounded: the machine is shared)."""
    return {
        "label": label,
        "wall_s": round(result.makespan_s, 4),
        "median_latency_s": round(result.median_latency_s, 4),
        "median_cpu_s": round(result.median_cpu_s, 4),
        "mean_cpu_s": round(result.mean_cpu_s, 4),
        "cpu_s": round(result.cpu_s, 4),
        "latencies_s": [round(x, 4) for x in result.latencies_s],
    }


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before[k] for k in after}


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
