"""``pbkv bench policies``: cache policies side by side in the simulated engine.

One run replays the same workload for every policy at every point of a sweep over GPU
capacity and concurrency, each through the same ``CacheManager`` code the service and vLLM
use, with the predictor in the loop (a trained artifact with ``--model``, else one trained
here on a train split of the workload). It prints a table, writes ``policies.json`` and
``policies.png`` to ``--out``, and reports each policy's ratio to ``lru`` and to the best
non-predictive two-tier baseline, and at each point the strict lower bound on latency
(``bench/bound_report.py``): the headroom over that baseline and the share of it pbkv
recovers. See ``docs/simulator.md``.

    pbkv bench policies --workload dynamic --num-workflows 80 \\
        --gpu-blocks 1000,2000,4000 --concurrency 8,16 --out bench-out/policies
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbkv.bench.bound_report import add_bounds, point_bound, print_bounds
from pbkv.bench.policies_report import (
    CLAIRVOYANT,
    IDEAL,
    add_ratios,
    plot,
    print_table,
    summarize,
)
from pbkv.bench.policy_run import RunSpec, run_policy
from pbkv.bench.progress import add_progress_argument, progress
from pbkv.bench.workload import (
    SYNTH_WORKFLOWS,
    build_predictor,
    distinct_blocks,
    int_list,
    load_workload,
    split,
)
from pbkv.cli import CliError
from pbkv.errors import require

POLICIES = (
    "lru",
    "lru-offload",
    "hicache",
    "vllm-offload",
    "continuum",
    "kvflow",
    "cachesage",
    "pbkv",
    CLAIRVOYANT,
    IDEAL,
)
# "ideal" is the simulator's perfect cache (EngineConfig.ideal_cache: nothing evicted). Neither
# it nor "clairvoyant" (Belady on the GPU tier; "oracle" is its old name) is a strict
# bound; the strict one is computed offline (engine_adapter/sim/bound.py, bound_report.py).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload",
        required=True,
        help="static | dynamic (synthetic) | real:<app> (bundled sample) | FILE "
        "(trace JSONL, .gz ok)",
    )
    parser.add_argument(
        "--num-workflows",
        type=int,
        default=None,
        help="synthetic: workflows to generate, train + replay (default "
        f"{SYNTH_WORKFLOWS}); files: use only the first N (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="workload and training seed")
    parser.add_argument(
        "--synth",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="synthetic-workload knob (repeatable), e.g. output_tokens=20,80",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="leading share of workflows used to train the predictor",
    )
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma list of policies to replay"
    )
    parser.add_argument("--preset", default="h100-llama8b", help="engine cost-model preset")
    parser.add_argument(
        "--gpu-blocks",
        default="auto",
        help="comma list of GPU capacities in blocks, or 'auto' (fractions of "
        "the replayed workload's distinct prompt blocks)",
    )
    parser.add_argument(
        "--cpu-blocks",
        default="auto",
        help="CPU tier capacity in blocks, or 'auto' (all distinct blocks)",
    )
    parser.add_argument(
        "--concurrency", default="8,16", help="comma list: workflows kept running (closed loop)"
    )
    parser.add_argument(
        "--think-time-s",
        type=float,
        default=0.0,
        help="orchestrator/tool time between a workflow's rounds",
    )
    parser.add_argument(
        "--trace-pauses",
        action="store_true",
        help="also pause before each round as long as the trace's step times show "
        "(the synthetic pause_s knob, e.g. --synth pause_s=1,30)",
    )
    parser.add_argument("--model", type=Path, default=None, help="trained predictor directory")
    parser.add_argument(
        "--predictor",
        default="fused",
        help="predictor trained on the train split when --model is not given "
        "(a name in pbkv.predictor.registry.PREDICTORS; fused = the "
        "trained model)",
    )
    parser.add_argument(
        "--horizon", type=int, default=4, help="steps ahead the manager's scorer looks"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/policies"),
        help="folder for policies.json and policies.png",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip policies.png")
    add_progress_argument(parser)


# ---------------------------------------------------------------------------------- main
def policy_list(text: str, flag: str = "--policies") -> list[str]:
    """``flag``'s comma list; the old name ``oracle`` becomes ``clairvoyant`` (warned)."""
    from pbkv.cli import warn

    policies = [p.strip() for p in text.split(",") if p.strip()]
    if not policies:
        raise CliError(f"{flag} is empty")
    if "oracle" in policies:
        warn("policy 'oracle' is now called 'clairvoyant' (it is not a bound)")
        policies = [CLAIRVOYANT if p == "oracle" else p for p in policies]
    return list(dict.fromkeys(policies))


def run(args: argparse.Namespace) -> int:
    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache

    policies = policy_list(args.policies)
    if not args.no_plot:  # before any work
        require("matplotlib", "plot", "policies.png (pass --no-plot to skip it)")
    try:
        preset = PRESETS.create(args.preset)
    except ValueError as exc:
        raise CliError(f"--preset: {exc}") from None
    workflows = load_workload(args.workload, args.num_workflows, args.seed, args.synth)
    train, test = split(workflows, args.train_fraction)
    print(
        f"workload {args.workload}: {len(workflows)} workflows, {len(train)} to train on, "
        f"{len(test)} replayed per policy and setting",
        flush=True,
    )
    predictor, predictor_desc = build_predictor(args, train, workflows)
    prompts = PromptCache(32_000, preset.tokens_per_block)
    blocks = distinct_blocks(test, prompts)
    if args.gpu_blocks == "auto":
        biggest = max(len(prompts.get(w, i)[1]) + 64 for w in test for i in range(len(w.steps)))
        gpus = sorted({max(biggest, int(blocks * f)) for f in (0.05, 0.1, 0.2, 0.4)})
    else:
        gpus = int_list(args.gpu_blocks, "gpu-blocks")
    if args.cpu_blocks == "auto":
        cpu = blocks
    elif args.cpu_blocks.isdigit():
        cpu = int(args.cpu_blocks)
    else:
        raise CliError(f"--cpu-blocks: expected 'auto' or an integer >= 0, got {args.cpu_blocks!r}")
    concs = int_list(args.concurrency, "concurrency")
    rows: list[dict[str, Any]] = []
    with progress(args, len(gpus) * len(concs) * len(policies), "replays") as bar:
        for gpu in gpus:
            for conc in concs:
                for policy in policies:
                    bar.describe(f"{policy} gpu={gpu} conc={conc}")
                    spec = RunSpec(
                        policy,
                        gpu,
                        cpu,
                        conc,
                        args.horizon,
                        args.think_time_s,
                        args.trace_pauses,
                    )
                    try:
                        rows.append(run_policy(spec, test, predictor, preset, prompts))
                    except ValueError as exc:
                        raise CliError(f"policy {policy!r} at gpu_blocks={gpu}: {exc}") from None
                    bar.advance()
    add_ratios(rows)
    summary = summarize(rows)
    bounds = {
        (gpu, conc): point_bound(
            test,
            prompts,
            preset,
            RunSpec("bound", gpu, cpu, conc, 0, args.think_time_s, args.trace_pauses),
        )
        for gpu in gpus
        for conc in concs
    }
    add_bounds(summary, rows, bounds)
    print_table(rows, summary)
    print_bounds(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "workload": args.workload,
        "seed": args.seed,
        "synth": args.synth,
        "num_workflows_train": len(train),
        "num_workflows_replayed": len(test),
        "distinct_prompt_blocks": blocks,
        "preset": preset.name,
        "preset_calibrated": preset.calibrated,
        "preset_source": preset.source,
        "predictor": predictor_desc,
        "policies": policies,
        "gpu_blocks": gpus,
        "cpu_blocks": cpu,
        "concurrency": concs,
        "think_time_s": args.think_time_s,
        "trace_pauses": args.trace_pauses,
        "rows": rows,
        "summary": summary,
    }
    (args.out / "policies.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.no_plot:
        plot(rows, args.out / "policies.png")
    print(
        f"wrote {args.out / 'policies.json'}"
        + ("" if args.no_plot else f" and {args.out / 'policies.png'}")
    )
    return 0
