"""``pbkv bench headroom``: where pbkv wins or loses against the best non-predictive two-tier
baseline, and how much room the strict lower bound leaves, over a grid of settings.

Axes (each a comma list; the grid is their product, one replay per policy, point and seed):

    --gpu          GPU blocks: ``0.25x`` (of the working set at that concurrency: the mean
                   distinct prompt blocks of a replayed workflow x concurrency, at most all of
                   them), ``full`` (the preset's full-size device, e.g. 25,243 blocks for
                   h100-llama8b) or a number
    --host         CPU tier: ``none`` or ``0.5x`` / ``1x`` / ``2x`` of the GPU's blocks
    --link-gbps    host link, GB/s per direction (the preset's cost model otherwise)
    --concurrency  workflows kept running (closed loop)
    --pauses       ``0`` or ``LOW-HIGH``: tool/think pauses before each round, uniform in
                   [LOW, HIGH] s (the synthetic ``pause_s`` knob; the replay honours them)

Per point and seed: ``best_nonpred`` (lowest mean workflow latency of the non-predictive
two-tier policies), ``pbkv_vs_best_nonpred`` = its latency / pbkv's, ``headroom`` = its
latency / the bound's (``engine_adapter/sim/bound.py``) and ``pbkv_share_recovered``; the
point's figure is the median over seeds. Output: a table, ``headroom.json`` and two heat maps
(``headroom_pbkv.png``, ``headroom_bound.png``). ``docs/simulator.md`` has a run and how long
the full grid takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from pbkv.bench.bound_report import headroom_figures, point_bound
from pbkv.bench.headroom_plot import REFERENCES, plot_heatmaps, print_points
from pbkv.bench.policies import policy_list
from pbkv.bench.policy_run import RunSpec, run_policy
from pbkv.bench.progress import add_progress_argument, progress
from pbkv.bench.workload import build_predictor, distinct_blocks, load_workload, split
from pbkv.cache_manager.baselines import NON_PREDICTIVE_TWO_TIER
from pbkv.cli import CliError

GRIDS: dict[str, dict[str, str]] = {
    # 16 points x 2 seeds x 5 policies + the bound, 24 small workflows: ~6 min on a loaded
    # 2-core machine (4 seeds: 12.6 min at load average 20-28, docs/simulator.md).
    "default": dict(
        gpu="0.25x,0.5x", host="none,1x", link_gbps="25", concurrency="4,16", pauses="0,1-30"
    ),
    "full": dict(
        gpu="0.125x,0.25x,0.5x",
        host="none,0.5x,1x,2x",
        link_gbps="12.5,25,50",
        concurrency="1,4,16,64",
        pauses="0,1-30",
    ),
}
NONPRED = NON_PREDICTIVE_TWO_TIER  # best-nonpred candidates
# pbkv variants, reported beside it when run
VARIANTS = ("pbkv-survival", "pbkv-hostgate", "pbkv-unclaimed", "pbkv-appaware", "pbkv-appshared")
MAX_POINTS = 10_000  # a grid larger than this is refused (every point is replayed per seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default="dynamic", help="static | dynamic | FILE")
    parser.add_argument(
        "--num-workflows", type=int, default=24, help="workflows per seed (half replayed)"
    )
    parser.add_argument(
        "--synth", action="append", default=[], metavar="KEY=VALUE", help="synthetic knob"
    )
    parser.add_argument(
        "--seeds", default="0,1", help="comma list of workload seeds (median over them)"
    )
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default", help="axis defaults")
    for axis in ("gpu", "host", "link_gbps", "concurrency", "pauses"):
        parser.add_argument(
            f"--{axis.replace('_', '-')}", default=None, help=f"override the grid's {axis} axis"
        )
    parser.add_argument("--preset", default="h100-llama8b", help="engine cost-model preset")
    parser.add_argument(
        "--policies",
        default=",".join((*NONPRED, "pbkv", "ideal")),
        help="policies replayed (pbkv and a non-predictive two-tier one at least; ideal, the "
        "simulated perfect cache, gives ideal_headroom: a practical reference, not a bound)",
    )
    parser.add_argument("--predictor", default="markov1", help="predictor trained per seed")
    parser.add_argument("--model", type=Path, default=None, help="trained predictor directory")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="leading share of each seed's workflows used to train the predictor",
    )
    parser.add_argument(
        "--horizon", type=int, default=4, help="steps ahead the manager's scorer looks"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/headroom"),
        help="folder for headroom.json, headroom_pbkv.png and headroom_bound.png",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the heat maps")
    add_progress_argument(parser)


# ---------------------------------------------------------------------------------- the grid
def parse_axes(args: argparse.Namespace) -> dict[str, list]:
    grid = GRIDS[args.grid]
    text = {k: getattr(args, k) or grid[k] for k in grid}
    axes: dict[str, list] = {
        "gpu": [_gpu_value(v) for v in _items(text["gpu"], "gpu")],
        "host": [_host_value(v) for v in _items(text["host"], "host")],
        "link_gbps": [_positive(v, "link-gbps") for v in _items(text["link_gbps"], "link-gbps")],
        "concurrency": [
            int(_positive(v, "concurrency")) for v in _items(text["concurrency"], "concurrency")
        ],
        "pauses": [_pause_value(v) for v in _items(text["pauses"], "pauses")],
    }
    size = 1
    for values in axes.values():
        size *= len(values)
    if size > MAX_POINTS:
        raise CliError(f"the grid has {size} points; at most {MAX_POINTS}")
    return axes


def _items(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CliError(f"--{name} is empty")
    return list(dict.fromkeys(items))


def _positive(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--{name}: {text!r} is not a number") from None
    if not value > 0:
        raise CliError(f"--{name}: {text!r} must be positive")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise CliError(f"--seeds: {text!r} is not an integer >= 0")
    return int(text)


def _gpu_value(text: str) -> str | float | int:
    if text == "full":
        return text
    if text.endswith("x"):
        return _positive(text[:-1], "gpu")
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise CliError(f"--gpu: {text!r} is not FRACTIONx, full or a positive integer")


def _host_value(text: str) -> float:
    if text == "none":
        return 0.0
    if text.endswith("x"):
        return _positive(text[:-1], "host")
    raise CliError(f"--host: {text!r} is not none or FRACTIONx (of the GPU blocks)")


def _pause_value(text: str) -> tuple[float, float]:
    if text == "0":
        return (0.0, 0.0)
    low, sep, high = text.partition("-")
    try:
        pair = (float(low), float(high))
    except ValueError:
        pair = (-1.0, -1.0)
    if not sep or not 0 <= pair[0] <= pair[1]:
        raise CliError(f"--pauses: {text!r} is not 0 or LOW-HIGH seconds")
    return pair


def label(value: Any, axis: str) -> str:
    if axis == "gpu":
        return value if isinstance(value, str | int) else f"{value:g}x"
    if axis == "host":
        return "none" if value == 0 else f"{value:g}x"
    if axis == "pauses":
        return "0" if value == (0.0, 0.0) else f"{value[0]:g}-{value[1]:g}s"
    return f"{value:g}"


# ---------------------------------------------------------------------------------- running
def gpu_blocks(value: Any, preset: Any, working_set: int, biggest: int) -> int:
    if value == "full":
        if preset.gpu_blocks is None:
            raise CliError(f"--gpu full: preset {preset.name!r} has no full-size capacity")
        blocks = preset.gpu_blocks
    elif isinstance(value, int):
        blocks = value
    else:
        blocks = int(value * working_set)
    return max(blocks, biggest)


def run(args: argparse.Namespace) -> int:
    from pbkv.engine_adapter.sim.presets import PRESETS
    from pbkv.engine_adapter.sim.replay import PromptCache

    axes = parse_axes(args)
    policies = policy_list(args.policies)
    if "pbkv" not in policies or not any(p in NONPRED for p in policies):
        raise CliError("--policies needs pbkv and at least one of " + ", ".join(NONPRED))
    seeds = [_seed(s) for s in _items(args.seeds, "seeds")]
    try:
        preset = PRESETS.create(args.preset)
    except ValueError as exc:
        raise CliError(f"--preset: {exc}") from None
    points = list(itertools.product(*axes.values()))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with progress(args, len(points) * len(seeds) * (len(policies) + 1), "replays") as bar:
        for seed in seeds:
            rows += _run_seed(args, seed, axes, points, policies, preset, PromptCache, bar)
    summary = summarize(rows, list(axes))
    print_points(summary, list(axes))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "workload": args.workload,
        "synth": args.synth,
        "num_workflows": args.num_workflows,
        "seeds": seeds,
        "preset": preset.name,
        "preset_gpu_blocks": preset.gpu_blocks,
        "predictor": args.predictor if args.model is None else str(args.model),
        "policies": policies,
        "axes": {k: [label(v, k) for v in vs] for k, vs in axes.items()},
        "wall_s": time.perf_counter() - started,
        "points": summary,
        "rows": rows,
    }
    (args.out / "headroom.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    written = [args.out / "headroom.json"]
    if not args.no_plot:
        written += plot_heatmaps(summary, axes, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run_seed(args, seed, axes, points, policies, preset, prompt_cache, bar) -> list[dict]:
    prompts = prompt_cache(32_000, preset.tokens_per_block)
    workloads: dict[tuple[float, float], list] = {}
    predictor = None
    out: list[dict[str, Any]] = []
    for gpu_v, host_v, link, conc, pause in points:
        if pause not in workloads:
            knobs = list(args.synth)
            if pause != (0.0, 0.0):
                knobs.append(f"pause_s={pause[0]},{pause[1]}")
            workflows = load_workload(args.workload, args.num_workflows, seed, knobs)
            workloads[pause] = split(workflows, args.train_fraction)
        train, test = workloads[pause]
        if predictor is None:
            predictor, _ = build_predictor(args, train, train + test)
        per_wf = statistics.fmean(distinct_blocks([w], prompts) for w in test)
        working_set = min(distinct_blocks(test, prompts), int(per_wf * conc))
        biggest = max(
            -(-(len(prompts.get(w, i)[0]) + s.output_tokens) // preset.tokens_per_block)
            for w in test
            for i, s in enumerate(w.steps)
        )
        gpu = gpu_blocks(gpu_v, preset, working_set, biggest)
        cost = dataclasses.replace(
            preset.cost, h2d_bytes_per_s=link * 1e9, d2h_bytes_per_s=link * 1e9
        )
        linked = dataclasses.replace(preset, cost=cost)
        spec = RunSpec("", gpu, int(host_v * gpu), conc, args.horizon, 0.0, pause != (0.0, 0.0))
        key = {
            "seed": seed,
            "gpu": label(gpu_v, "gpu"),
            "host": label(host_v, "host"),
            "link_gbps": label(link, "link_gbps"),
            "concurrency": label(conc, "concurrency"),
            "pauses": label(pause, "pauses"),
            "gpu_blocks": gpu,
            "cpu_blocks": spec.cpu_blocks,
            "working_set_blocks": working_set,
            "replayed_workflows": len(test),
        }
        at: dict[str, Any] = {}
        for policy in policies:
            bar.describe(f"seed {seed} {policy} gpu={gpu} host={spec.cpu_blocks} conc={conc}")
            try:
                row = run_policy(
                    dataclasses.replace(spec, policy=policy), test, predictor, linked, prompts
                )
            except ValueError as exc:
                raise CliError(f"policy {policy!r} at {key}: {exc}") from None
            at[policy] = row
            bar.advance()
        bound = point_bound(test, prompts, linked, spec)
        bar.advance()
        point = {f"{p}_mean_latency_s": r["mean_latency_s"] for p, r in at.items()}
        point["diagnostics"] = {p: diagnostics(r) for p, r in at.items()}
        best = min((p for p in NONPRED if p in at), key=lambda p: at[p]["mean_latency_s"])
        point["best_nonpred"] = best
        point["pbkv_vs_best_nonpred"] = at[best]["mean_latency_s"] / at["pbkv"]["mean_latency_s"]
        for v in VARIANTS:
            if v in at:
                point[f"{v}_vs_best_nonpred"] = at[best]["mean_latency_s"] / at[v]["mean_latency_s"]
        point.update(headroom_figures(point, bound, list(at.values())))
        for ref in REFERENCES:
            if ref in at:
                point[f"pbkv_vs_{ref}"] = at[ref]["mean_latency_s"] / at["pbkv"]["mean_latency_s"]
        if "ideal" in at:
            point["ideal_headroom"] = at[best]["mean_latency_s"] / at["ideal"]["mean_latency_s"]
        out.append(key | point)
    return out


# Where a policy's time goes (issue 12 item 5): prompt tokens recomputed, time the engine
# waited on the host link with nothing else to run, bytes over the link, prefetch precision.
DIAGNOSTICS = (
    "recomputed_tokens",
    "gpu_hit_rate",
    "cpu_hit_rate",
    "stall_s",
    "busy_s",
    "h2d_bytes",
    "d2h_bytes",
    "transfer_bytes",
    "prefetched_blocks",
    "prefetch_used_blocks",
    "prefetch_wasted_blocks",
    "prefetch_precision",
    "gpu_evictions",
    "dropped_writebacks",
    "makespan_s",
    "wall_s",
)


def diagnostics(row: dict[str, Any]) -> dict[str, Any]:
    """The ``DIAGNOSTICS`` figures of one policy's replay row (those it has)."""
    return {k: row[k] for k in DIAGNOSTICS if k in row}


AXES_KEYS = ("gpu", "host", "link_gbps", "concurrency", "pauses")
MEDIANS = (
    "pbkv_vs_best_nonpred",
    *(f"{v}_vs_best_nonpred" for v in VARIANTS),
    *(f"pbkv_vs_{ref}" for ref in REFERENCES),
    "headroom",
    "ideal_headroom",
    "pbkv_share_recovered",
    "bound_mean_latency_s",
)


def summarize(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """One entry per grid point: the median over seeds of ``MEDIANS`` and of each policy's
    mean latency, the per-seed ratios, and which baseline was best in how many seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in AXES_KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        point: dict[str, Any] = dict(zip(AXES_KEYS, key, strict=True))
        point["seeds"] = len(rs)
        point["gpu_blocks"] = sorted({r["gpu_blocks"] for r in rs})
        point["replayed_workflows"] = sorted({r["replayed_workflows"] for r in rs})
        for name in MEDIANS:
            values = [r[name] for r in rs if r.get(name) is not None]
            point[name] = statistics.median(values) if values else None
        lat = sorted({k for r in rs for k in r if k.endswith("_mean_latency_s")})
        for name in lat:
            point[name] = statistics.median(r[name] for r in rs if name in r)
        point["pbkv_vs_best_nonpred_per_seed"] = [r["pbkv_vs_best_nonpred"] for r in rs]
        for name in (f"pbkv_vs_{ref}" for ref in REFERENCES):
            if any(name in r for r in rs):
                point[f"{name}_per_seed"] = [r[name] for r in rs]
        point["best_nonpred_counts"] = {
            p: sum(r["best_nonpred"] == p for r in rs) for p in {r["best_nonpred"] for r in rs}
        }
        point["bound_holds"] = all(r["bound_holds"] for r in rs)
        out.append(point)
    return out
