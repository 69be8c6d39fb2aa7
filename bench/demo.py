"""``pbkv demo``: the main job end to end on the embedded default (no Redis, no GPU).

    1. load the bundled samples of real multi-agent logs (ChatDev, Magentic-One, CaptainAgent)
    2. train the fused predictor on a train split of them (``pbkv.training.train``)
    3. start the pbkv service in-process: gRPC on loopback, SQLite trace store, dashboard
    4. replay the held-out workflows through the simulated engine, the service in the loop:
       orchestrator calls over gRPC (PbkvClient), engine events and cache plans over the
       EngineLink stream (EngineLinkClient)
    5. replay the same workflows with the baselines in-process, same engine and host tier:
       the non-predictive two-tier ones (lru-offload, continuum; the best of them is
       best-nonpred), the clairvoyant policy, and LRU without a host tier
    6. print hit rates, prefetch precision, host-link bytes, latencies and pbkv's ratio over
       best-nonpred, then over tier-less LRU (bench/demo_report.py)

The regime: the GPU holds a small share of the replay's distinct prompt blocks
(``--gpu-fraction``) and the host tier as many blocks as the GPU (``--host-fraction``), where
the simulator's sweeps leave prediction room over the best non-predictive baseline
(docs/simulator.md); a host tier holding every distinct block makes every CPU-tier policy tie.

The simulated engine's clock is virtual, so in service mode it pauses at each plan pull until
the service has applied every event sent so far (``EngineLinkClient.sync``): the service in
the loop then decides exactly what the in-process manager would, and the numbers are
comparable. (A real engine never waits; see docs/service.md.)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbkv.bench.demo_baseline import BaselineCurve, WorkflowTap
from pbkv.bench.demo_report import comparison, headline, pct, print_results
from pbkv.bench.demo_service import run_via_service, say
from pbkv.bench.progress import Bar, add_progress_argument, progress

BASELINES = ("lru", "lru-offload", "continuum", "clairvoyant")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="folder for the model, trace store and results",
    )
    parser.add_argument(
        "--http-port", type=int, default=8377, help="dashboard port (taken: any free port)"
    )
    parser.add_argument("--port", type=int, default=50151, help="gRPC port (taken: any free)")
    parser.add_argument(
        "--replay-per-app", type=int, default=12, help="held-out workflows replayed per app"
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.6,
        help="share of each app's workflows used for training",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="workflows running at once")
    parser.add_argument(
        "--gpu-fraction",
        type=float,
        default=0.02,
        help="GPU KV capacity as a fraction of the replay's distinct blocks",
    )
    parser.add_argument(
        "--host-fraction",
        type=float,
        default=1.0,
        help="host (CPU) tier capacity as a multiple of the GPU's blocks",
    )
    parser.add_argument("--preset", default="h100-llama8b", help="simulated engine preset")
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="policies replayed in-process for comparison (lru, the tier-less reference, "
        "is required; the best of the non-predictive two-tier ones is best-nonpred)",
    )
    parser.add_argument(
        "--keep-serving",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the service and dashboard up after the run until Ctrl-C "
        "(default: when stdin is a terminal; --no-keep-serving ends the "
        "demo with the run)",
    )
    parser.add_argument(
        "--linger-s",
        type=float,
        default=0.0,
        help="keep the service and dashboard up this long after the run",
    )
    parser.add_argument(
        "--traces", type=Path, nargs="+", help="trace files to use instead of the bundled samples"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    add_progress_argument(parser)


@dataclass(frozen=True, slots=True)
class DemoSetup:
    gpu_blocks: int
    cpu_blocks: int
    concurrency: int
    tokens_per_block: int
    distinct_blocks: int


def load_samples(
    train_fraction: float, replay_per_app: int, traces: list[Path] | None = None
) -> tuple[list, list, dict]:
    """Per app: the first ``train_fraction`` of its workflows train, the next
    ``replay_per_app`` are replayed."""
    from pbkv.cli import CliError
    from pbkv.training.trace_io import load_workflows

    if not 0 < train_fraction < 1:
        raise CliError(f"--train-fraction must be in (0, 1), got {train_fraction}")
    by_app: dict[str, list] = {}
    if traces:
        for path in traces:
            if not path.is_file():
                raise CliError(f"--traces {path}: no such file")
            for wf in load_workflows(path):
                by_app.setdefault(wf.app, []).append(wf)
    else:
        try:
            from pbkv.training.samples import sample_paths
        except ImportError as exc:
            raise CliError(
                f"the bundled samples are not installed ({exc}); give trace files with --traces"
            ) from None
        for app, path in sample_paths().items():
            by_app.setdefault(app, []).extend(load_workflows(path))
    train, replay, counts = [], [], {}
    for app, workflows in sorted(by_app.items()):
        n_train = max(1, int(len(workflows) * train_fraction))
        held_out = workflows[n_train:][:replay_per_app]
        train.extend(workflows[:n_train])
        replay.extend(held_out)
        counts[app] = (n_train, len(held_out))
    if not train or not replay:
        raise CliError("no workflows to train on or to replay")
    return train, replay, counts


def train_model(train: list, out: Path, seed: int):
    from pbkv.predictor.fused import FusedConfig
    from pbkv.training.train import train as fit

    model, meta = fit(train, out, FusedConfig(seed=seed), sources=["bundled samples"])
    return model, meta


def setup_engine(
    replay: list,
    preset,
    prompts,
    gpu_fraction: float,
    concurrency: int,
    host_fraction: float = 1.0,
) -> DemoSetup:
    """GPU blocks: ``gpu_fraction`` of the replay's distinct prompt blocks (at least one
    request's blocks plus 64); host blocks: ``host_fraction`` x the GPU's."""
    from pbkv.bench.workload import distinct_blocks

    blocks = distinct_blocks(replay, prompts)
    tpb = preset.tokens_per_block
    biggest = max(
        len(prompts.get(w, i)[1]) + -(-w.steps[i].output_tokens // tpb)
        for w in replay
        for i in range(len(w.steps))
    )  # one request's blocks
    gpu = max(biggest + 64, int(blocks * gpu_fraction))
    return DemoSetup(gpu, int(gpu * host_fraction), concurrency, preset.tokens_per_block, blocks)


def run_in_process(
    policy: str,
    replay: list,
    predictor,
    preset,
    prompts,
    setup: DemoSetup,
    horizon: int = 4,
    bar: Bar | None = None,
    curve: BaselineCurve | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One in-process replay; ``curve`` records its stats after each finished workflow."""
    from pbkv.bench.policy_run import manager_config, with_manager_prefetch
    from pbkv.cache_manager.baselines import engine_options
    from pbkv.cache_manager.manager import CacheManager
    from pbkv.engine_adapter.sim.attach import attach_manager
    from pbkv.engine_adapter.sim.engine import EngineConfig
    from pbkv.engine_adapter.sim.replay import ReplayConfig
    from pbkv.engine_adapter.sim.replay import replay as run_replay

    engine_ref: list = []
    manager = CacheManager(
        manager_config(policy, horizon, preset.cost),
        predictor=copy.deepcopy(predictor),
        clock=lambda: engine_ref[0].now_s if engine_ref else 0.0,
    )
    if policy == "clairvoyant":
        manager.set_oracle_future(replay, prompt_blocks=lambda w, i: prompts.get(w, i)[1])
    engine = attach_manager(
        manager,
        EngineConfig(
            gpu_blocks=setup.gpu_blocks,
            cpu_blocks=setup.cpu_blocks,
            tokens_per_block=setup.tokens_per_block,
            engine_id=f"sim-{policy}",
            **engine_options(policy),
        ),
        preset.cost,
    )
    engine_ref.append(engine)

    def done(k: int) -> None:
        if bar is not None:
            bar.advance()
        if curve is not None:
            curve.record(k, _stats_dict(manager))

    if curve is not None:
        curve.record(0, _stats_dict(manager))
    t0 = time.perf_counter()
    result = run_replay(
        engine,
        replay,
        ReplayConfig(concurrency=setup.concurrency),
        orchestrator=WorkflowTap(manager, done),
        prompts=prompts,
    )
    stats = _stats_dict(manager)
    row = {
        "policy": policy,
        "via": "in-process",
        **with_manager_prefetch(result.summary(), stats),
        "wall_s": time.perf_counter() - t0,
    }
    return row, stats


def _stats_dict(manager) -> dict[str, Any]:
    stats = manager.stats()
    return dict(stats.to_dict()) if hasattr(stats, "to_dict") else {}


def run(args: argparse.Namespace) -> int:
    from pbkv.bench.policies import policy_list
    from pbkv.cache_manager.policies import POLICIES as CACHE_POLICIES
    from pbkv.cli import CliError
    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache

    started = time.perf_counter()
    baselines = policy_list(args.baselines, "--baselines")
    if "lru" not in baselines:
        raise CliError("--baselines must include lru (the tier-less reference)")
    unknown = [p for p in baselines if p not in CACHE_POLICIES]
    if unknown:
        raise CliError(
            f"--baselines: unknown policy {', '.join(unknown)} "
            f"(known: {', '.join(CACHE_POLICIES.names())})"
        )
    if args.concurrency <= 0 or not 0 < args.gpu_fraction <= 1:
        raise CliError("--concurrency must be > 0 and --gpu-fraction in (0, 1]")
    if not 0 <= args.host_fraction <= 16:
        raise CliError(f"--host-fraction must be in [0, 16], got {args.host_fraction}")
    try:
        preset = PRESETS.create(args.preset)
    except ValueError as exc:
        raise CliError(f"--preset: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)

    train, replay, counts = load_samples(args.train_fraction, args.replay_per_app, args.traces)
    say(
        ("traces" if args.traces else "bundled real-log samples")
        + ": "
        + ", ".join(
            f"{app} {n_train} train / {n_replay} replay"
            for app, (n_train, n_replay) in counts.items()
        )
    )
    t0 = time.perf_counter()
    model, meta = train_model(train, args.out / "model", args.seed)
    accuracy = meta.get("metrics", {}).get("validation_top1_per_app", {})
    say(
        f"trained the fused predictor on {len(train)} workflows in "
        f"{time.perf_counter() - t0:.1f} s -> {args.out / 'model'}; validation top-1: "
        + ", ".join(f"{app} {acc:.2f}" for app, acc in sorted(accuracy.items()))
    )

    prompts = PromptCache(32_000, preset.tokens_per_block)
    setup = setup_engine(
        replay, preset, prompts, args.gpu_fraction, args.concurrency, args.host_fraction
    )
    say(
        f"simulated engine ({preset.name}): {setup.gpu_blocks} GPU blocks, {setup.cpu_blocks} "
        f"host (CPU) blocks, {setup.distinct_blocks} distinct prompt blocks, "
        f"{setup.concurrency} workflows at once"
    )

    rows: list[dict[str, Any]] = []
    curve = BaselineCurve(len(replay))

    def finish(row: dict[str, Any], service_stats: dict[str, Any]) -> None:
        bar.close()
        rows.insert(1, row)
        say(
            f"   pbkv (gRPC service): mean workflow latency {row['mean_latency_s']:.3f} s, "
            f"GPU hit {pct(row.get('gpu_hit_rate'))} ({row['wall_s']:.1f} s)"
        )
        print_results(rows)
        svc = service_stats.get("service", {})
        cmp = comparison(rows, row)
        say(headline(cmp))
        say(
            f"the service recorded {svc.get('events_recorded')} workflow "
            f"events ({args.out / 'traces.sqlite3'}; `pbkv export-traces --store-path "
            f"{args.out / 'traces.sqlite3'} --out live.jsonl.gz` feeds them to `pbkv train`)"
        )
        report = {
            "samples": counts,
            "setup": dataclasses.asdict(setup),
            "rows": rows,
            "comparison": cmp,
            "service_stats": service_stats,
            "wall_s": time.perf_counter() - started,
        }
        (args.out / "demo.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"wrote {args.out / 'demo.json'} ({time.perf_counter() - started:.0f} s in all)")

    with progress(args, len(replay) * (len(baselines) + 1), "replays", unit="workflow") as bar:
        for policy in baselines:
            t0 = time.perf_counter()
            bar.describe(f"{policy} (in-process)")
            row, _ = run_in_process(
                policy,
                replay,
                model,
                preset,
                prompts,
                setup,
                bar=bar,
                curve=curve if policy == "lru" else None,
            )
            rows.append(row)
            say(
                f"{policy:>7} (in-process): mean workflow latency "
                f"{row['mean_latency_s']:.3f} s, GPU hit {pct(row.get('gpu_hit_rate'))} "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        bar.describe("pbkv (gRPC service)")
        run_via_service(replay, model, preset, prompts, setup, args, curve, bar, finish)
    return 0
