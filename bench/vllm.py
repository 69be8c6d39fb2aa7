"""``pbkv bench vllm``: workflows through a real vLLM engine (CPU backend), stock vs pbkv.

One invocation, three engine processes (vLLM keeps process-global state; a process per engine
also guarantees nothing is left running):

1. **eviction** -- a KV cache small enough to force eviction; one engine with the pbkv
   connector replays each workload under ``lru`` (connector on a null link: vLLM's own LRU
   order, no host tier), ``pbkv`` (plans, GPU tier only) and ``pbkv+host`` (plans and the host
   tier), interleaved per repeat so that machine load drifts hit all three alike.
2. **overhead** -- a KV cache that holds everything: truly stock vLLM (no connector) and pbkv
   (connector + in-process manager) on the dynamic workload, one process each.
3. **calibration** -- the ``lru`` runs' per-iteration batch shapes and times are fitted to the
   simulator's cost model (non-negative least squares); the simulator then replays the same
   workflows with the fitted preset and its workflow latencies are compared with the measured
   ones. The fitted preset goes to ``OUT/vllm-cpu.json`` (``--calibration-out FILE`` too,
   e.g. ``engine_adapter/sim/calibration/vllm-cpu.json`` to replace the committed one), but
   only when the fit's R^2 reaches ``--min-r2``: on a loaded machine the per-iteration times
   are noise and the fit would overwrite a good preset with a poor one
   (``--accept-poor-fit`` writes it anyway).

Reported: median workflow latency per run, the ratio to ``lru`` per repeat (side by side) and
its median, token hit rates, host-tier hits. The machine is shared: compare ratios, not
absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.bench.vllm_calibration import calibrate, kv_bytes_per_token, modelled
from pbkv.bench.vllm_checks import head_to_head, output_identity
from pbkv.bench.vllm_process import (
    BLOCK_SIZE,
    DEFAULT_KNOBS,
    cache_bytes,
    knobs,
    make_model,
    overhead_phase,
    run_in_process,
)
from pbkv.bench.vllm_report import print_report, strip_rows, summarise
from pbkv.cli import CliError, warn

# eviction runs: the connector's null link (lru), pbkv's plans on the GPU tier only, and
# host-tier orders behind the same connector and host tier (--host-tier-blocks): `+host`
# keeping every copy of a GPU block (as vLLM's CPU offloading and SGLang's HiCache do), `+xhost`
# with the exclusive margin (--exclusive-margin-blocks)
RUNS = (
    "lru",
    "pbkv",
    "pbkv+host",
    "lru-offload+host",
    "pbkv+xhost",
    "lru-offload+xhost",
    "kvflow+host",
)
DEFAULT_RUNS = "lru,pbkv,pbkv+host,lru-offload+host"
DEFAULT_TRAIN_STEPS = 600
DEFAULT_EXCLUSIVE_MARGIN = 96


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", default=None, help="model to serve (default: a fresh `pbkv model make-tiny`)"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=DEFAULT_TRAIN_STEPS,
        help="without --model-dir: train the fresh tiny model this many steps on pbkv's docs "
        "(wide greedy margins; 0: random weights)",
    )
    parser.add_argument(
        "--runs",
        default=DEFAULT_RUNS,
        help=f"eviction runs beside stock, a comma list of {', '.join(RUNS)} (lru required)",
    )
    parser.add_argument(
        "--allow-output-mismatch",
        action="store_true",
        help="record greedy outputs that differ from stock's instead of failing (exit 3)",
    )
    parser.add_argument(
        "--workloads",
        default="dynamic,static",
        help="comma list of synthetic workloads: dynamic, static",
    )
    parser.add_argument(
        "--synth",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a synthetic-workload knob for every workload "
        "(repeatable), e.g. system_tokens=500,2000",
    )
    parser.add_argument(
        "--num-workflows", type=int, default=40, help="workflows replayed per workload"
    )
    parser.add_argument(
        "--history-workflows",
        type=int,
        default=200,
        help="other workflows the predictor is trained on",
    )
    parser.add_argument("--concurrency", type=int, default=6, help="workflows run at once")
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        default=8,
        help="tokens generated per step (caps the trace's output)",
    )
    parser.add_argument(
        "--kv-blocks", type=int, default=150, help="eviction runs: GPU KV cache size in blocks"
    )
    parser.add_argument(
        "--big-kv-blocks",
        type=int,
        default=4096,
        help="overhead runs: a KV cache that holds everything (blocks)",
    )
    parser.add_argument(
        "--host-tier-blocks",
        type=int,
        default=2048,
        help="pbkv+host runs: CPU (host) tier capacity in blocks",
    )
    parser.add_argument(
        "--exclusive-margin-blocks",
        type=int,
        default=DEFAULT_EXCLUSIVE_MARGIN,
        help="`+xhost` runs: the host tier drops first its copies of GPU blocks outside the "
        "next this-many the GPU evicts (`+host` runs: 0, every copy kept)",
    )
    parser.add_argument(
        "--predictor",
        default="fused",
        help="predictor trained on --history-workflows other workflows",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds per phase")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument(
        "--phases",
        default="eviction,overhead",
        help="eviction (with the simulator's calibration), overhead, or both",
    )
    parser.add_argument(
        "--overhead-inner",
        type=int,
        default=3,
        help="overhead runs: replays per engine process and round",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/vllm"),
        help="folder for bench-vllm.json and the fitted preset vllm-cpu.json "
        "(a FILE.json here is the deprecated spelling: results there)",
    )
    parser.add_argument(
        "--calibration-out",
        type=Path,
        default=None,
        help="also write the fitted vllm-cpu preset here (e.g. "
        "engine_adapter/sim/calibration/vllm-cpu.json)",
    )
    parser.add_argument(
        "--min-r2",
        type=float,
        default=MIN_R2,
        help="refuse to write a calibration whose per-iteration fit R^2 is "
        "lower (a loaded machine)",
    )
    parser.add_argument(
        "--accept-poor-fit", action="store_true", help="write the calibration whatever its R^2"
    )
    parser.add_argument("--timeout-s", type=float, default=3000.0, help="per engine process")
    add_progress_argument(parser)


MIN_R2 = 0.9  # the committed preset's fit: 0.98 on an idle machine


def session_run(name: str, host_tier_blocks: int, exclusive_margin_blocks: int) -> Any:
    """The ``SessionRun`` of a ``--runs`` name: ``POLICY``, ``POLICY+host`` (host tier keeping
    every copy) or ``POLICY+xhost`` (host tier with the exclusive margin)."""
    from pbkv.bench.vllm_session import SessionRun

    for suffix, margin in (("+xhost", exclusive_margin_blocks), ("+host", 0)):
        if name.endswith(suffix):
            policy = name.removesuffix(suffix)
            return SessionRun(name, policy, host_tier_blocks, exclusive_margin_blocks=margin)
    return SessionRun(name, name)


def output_paths(out: Path) -> tuple[Path, Path]:
    """(results file, folder for the calibration) of ``--out``; a ``.json`` name is the old
    spelling (a results file), kept with a warning."""
    if out.suffix == ".json":
        warn(
            f"--out {out}: a results file is deprecated; --out names a folder "
            f"(writing {out}, the calibration beside it)"
        )
        return out, out.parent
    return out / "bench-vllm.json", out


def phase_labels(phases: set[str], kinds: list[str]) -> dict[str, str]:
    """``[i/n] name`` of each step that will run, in order (overhead needs the dynamic
    workload; calibration follows eviction)."""
    steps = [
        p
        for p in ("eviction", "overhead")
        if p in phases and (p != "overhead" or "dynamic" in kinds)
    ]
    steps += ["calibration"] if "eviction" in phases else []
    return {name: f"[{i}/{len(steps)}] {name}" for i, name in enumerate(steps, 1)}


def check_fit(r2: float, min_r2: float, accept: bool) -> None:
    """Raise a ``CliError`` for a fit too poor to become a preset (unless ``accept``)."""
    if r2 < min_r2 and not accept:
        raise CliError(
            f"calibration not written: the cost-model fit's R^2 is {r2:.3f}, below "
            f"--min-r2 {min_r2} (per-iteration times are noisy on a loaded "
            "machine); rerun on an idle machine, or pass --accept-poor-fit"
        )


def run(args: argparse.Namespace) -> int:
    from pbkv.bench.vllm_session import SessionRun, SessionSpec, WorkloadSpec

    kinds = [k.strip() for k in args.workloads.split(",") if k.strip()]
    bad = [k for k in kinds if k not in DEFAULT_KNOBS]
    if bad or not kinds:
        raise CliError(f"--workloads: unknown {bad}; known: {sorted(DEFAULT_KNOBS)}")
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - {"eviction", "overhead"}:
        raise CliError(f"--phases: expected eviction, overhead or both, got {args.phases!r}")
    for name in (
        "num_workflows",
        "concurrency",
        "repeats",
        "max_output_tokens",
        "kv_blocks",
        "big_kv_blocks",
        "overhead_inner",
    ):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.min_r2 <= 1:
        raise CliError(f"--min-r2 must be in [0, 1], got {args.min_r2}")
    run_names = [r.strip() for r in args.runs.split(",") if r.strip()]
    if "lru" not in run_names or set(run_names) - set(RUNS):
        raise CliError(f"--runs: a comma list of {list(RUNS)} that includes lru, got {args.runs!r}")
    if args.exclusive_margin_blocks < 0:
        raise CliError("--exclusive-margin-blocks must be 0 or positive")
    if args.train_steps < 0:
        raise CliError("--train-steps must be 0 or positive")
    results_path, out_dir = output_paths(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.calibration_out is not None and not args.calibration_out.parent.is_dir():
        raise CliError(
            f"--calibration-out {args.calibration_out}: folder "
            f"{args.calibration_out.parent} does not exist"
        )
    tmp = tempfile.TemporaryDirectory(prefix="pbkv-bench-vllm-")
    model_dir = args.model_dir or make_model(Path(tmp.name) / "tiny", args.train_steps)
    workloads = tuple(
        WorkloadSpec(
            k,
            f"synth:{k}",
            num_workflows=args.num_workflows,
            seed=args.seed,
            history_workflows=args.history_workflows,
            knobs=knobs(k, args.synth),
        )
        for k in kinds
    )
    block_bytes = kv_bytes_per_token(model_dir) * BLOCK_SIZE
    common = dict(
        model_dir=model_dir,
        predictor=args.predictor,
        concurrency=args.concurrency,
        block_size=BLOCK_SIZE,
        max_output_tokens=args.max_output_tokens,
        repeats=1,
    )
    small = cache_bytes(args.kv_blocks, block_bytes)
    runs = tuple(
        session_run(name, args.host_tier_blocks, args.exclusive_margin_blocks) for name in run_names
    )
    stock = SessionSpec(
        runs=(SessionRun("stock", "stock"),),
        with_connector=False,
        kv_cache_memory_bytes=small,
        workloads=workloads,
        **common,
    )
    results: dict[str, Any] = {
        "command": " ".join(["pbkv bench vllm", *sys.argv[3:]]),
        "model_dir": model_dir,
        "args": vars(args) | {"func": None},
        "kv_bytes_per_token": block_bytes // BLOCK_SIZE,
        "load_average_before": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    label = phase_labels(phases, kinds)
    steps = list(label)
    processes = 2 * args.repeats * sum(p in steps for p in ("eviction", "overhead"))
    with progress(args, processes, "bench vllm", unit="engine process") as bar:
        if "eviction" in steps:
            print(
                f"{label['eviction']} runs ({args.kv_blocks} KV blocks), {args.repeats} rounds ...",
                flush=True,
            )
            for repeat in range(args.repeats):
                # A round: stock vLLM in one engine process, lru / pbkv / pbkv+host in another
                # (the connector's runs rotate their order); the two processes alternate which
                # goes first.
                shift = repeat % len(runs)
                connector = SessionSpec(
                    runs=runs[shift:] + runs[:shift],
                    kv_cache_memory_bytes=small,
                    workloads=workloads,
                    log_iterations=True,
                    **common,
                )
                for spec in (stock, connector) if repeat % 2 == 0 else (connector, stock):
                    bar.describe(f"{label['eviction']} round {repeat + 1}/{args.repeats}")
                    rows += [
                        {**row, "repeat": repeat}
                        for row in run_in_process(spec, Path(tmp.name), args.timeout_s)
                    ]
                    bar.advance()
                print(f"      round {repeat + 1}/{args.repeats} done", flush=True)
            results["eviction"] = strip_rows(rows)
            results["eviction_summary"] = summarise(rows, baseline="stock")
            results["eviction_summary_vs_lru"] = summarise(rows, baseline="lru")
            results["greedy_identity"] = output_identity(rows)
            results["greedy_identical"] = results["greedy_identity"]["identical"]
            results["requests_per_replay"] = {r["workload"]: r["requests"] for r in rows}
        if "overhead" in steps:
            print(
                f"{label['overhead']} runs ({args.big_kv_blocks} KV blocks), {args.repeats} "
                f"rounds x {args.overhead_inner} ...",
                flush=True,
            )
            bar.describe(label["overhead"])
            results["overhead"], results["overhead_summary"], results["overhead_summary_vs_lru"] = (
                overhead_phase(args, workloads, common, block_bytes, Path(tmp.name), bar)
            )
    refused = None
    if rows:
        print(f"{label['calibration']} ...", flush=True)
        results["calibration"], preset = calibrate(rows, workloads, runs, connector, model_dir)
        results["modelled"] = modelled(rows)
        results["head_to_head"] = head_to_head(rows, results["modelled"])
        try:
            check_fit(results["calibration"]["iteration_fit_r2"], args.min_r2, args.accept_poor_fit)
        except CliError as exc:
            refused = exc
        else:
            for path in (out_dir / "vllm-cpu.json", args.calibration_out):
                if path is not None:
                    path.write_text(json.dumps(preset, indent=2) + "\n")
                    print(f"wrote the fitted preset {path}")
    results["load_average_after"] = os.getloadavg()
    results_path.write_text(json.dumps(results, indent=1, default=str))
    print_report(results)
    print(f"wrote {results_path}")
    tmp.cleanup()
    if refused is not None:
        raise refused
    if not results.get("greedy_identical", True) and not args.allow_output_mismatch:
        return 3
    return 0
