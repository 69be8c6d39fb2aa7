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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.bench.vllm_calibration import calibrate, kv_bytes_per_token, modelled
from pbkv.bench.vllm_checks import head_to_head, output_identity, report_lines
from pbkv.cli import CliError, warn

DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    # The regime where the cache decides latency (chosen with `pbkv bench policies --preset
    # vllm-cpu`, see docs/vllm-adapter.md): long per-agent system prompts, short outputs, a GPU
    # KV cache of ~150 blocks against a working set of several hundred.
    "dynamic": {
        "system_tokens": [1000, 4000],
        "new_tokens": [32, 128],
        "output_tokens": [8, 8],
        "history_growth": 0.5,
    },
    "static": {
        "system_tokens": [1000, 4000],
        "new_tokens": [32, 128],
        "output_tokens": [8, 8],
        "pipeline_len": [4, 5],
        "num_apps": 2,
    },
}


# eviction runs: the connector's null link (lru), pbkv's plans on the GPU tier only, and
# host-tier orders behind the same connector and host tier (--host-tier-blocks): `+host` with
# the exclusive margin (--exclusive-margin-blocks), `+keephost` keeping every copy of a GPU
# block (vLLM's CPU offloading, SGLang's HiCache)
RUNS = (
    "lru",
    "pbkv",
    "pbkv+host",
    "lru-offload+host",
    "lru-offload+keephost",
    "pbkv+keephost",
    "kvflow+host",
)
DEFAULT_RUNS = "lru,pbkv,pbkv+host,lru-offload+host,lru-offload+keephost"
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
        help="`+host` runs: the host tier drops first its copies of GPU blocks outside the "
        "next this-many the GPU evicts (`+keephost` runs: 0, every copy kept)",
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
    """The ``SessionRun`` of a ``--runs`` name: ``POLICY``, ``POLICY+host`` (host tier with
    the exclusive margin) or ``POLICY+keephost`` (host tier keeping every copy)."""
    from pbkv.bench.vllm_session import SessionRun

    for suffix, margin in (("+keephost", 0), ("+host", exclusive_margin_blocks)):
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
    model_dir = args.model_dir or _make_model(Path(tmp.name) / "tiny", args.train_steps)
    workloads = tuple(
        WorkloadSpec(
            k,
            f"synth:{k}",
            num_workflows=args.num_workflows,
            seed=args.seed,
            history_workflows=args.history_workflows,
            knobs=_knobs(k, args.synth),
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
    small = _cache_bytes(args.kv_blocks, block_bytes)
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
                        for row in _run_in_process(spec, Path(tmp.name), args.timeout_s)
                    ]
                    bar.advance()
                print(f"      round {repeat + 1}/{args.repeats} done", flush=True)
            results["eviction"] = _strip(rows)
            results["eviction_summary"] = _summarise(rows, baseline="stock")
            results["eviction_summary_vs_lru"] = _summarise(rows, baseline="lru")
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
                _overhead(args, workloads, common, block_bytes, Path(tmp.name), bar)
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
    _print_report(results)
    print(f"wrote {results_path}")
    tmp.cleanup()
    if refused is not None:
        raise refused
    if not results.get("greedy_identical", True) and not args.allow_output_mismatch:
        return 3
    return 0


def _overhead(
    args: argparse.Namespace,
    workloads: tuple,
    common: dict[str, Any],
    block_bytes: int,
    tmp: Path,
    bar: Any,
) -> tuple[list, dict, dict]:
    """A KV cache that holds everything. Each round: stock vLLM in one process, and in another
    the connector on a null link (``lru``: vLLM's connector machinery, no pbkv) alternating
    with pbkv (connector + in-process manager); ``--overhead-inner`` replays of each per
    process. Ratios pair replay i of a round across the processes (vs stock) and within the
    process (vs lru)."""
    from pbkv.bench.vllm_session import SessionRun, SessionSpec

    dyn = tuple(w for w in workloads if w.name == "dynamic")
    big = _cache_bytes(args.big_kv_blocks, block_bytes)
    inner = {**common, "repeats": args.overhead_inner}
    stock = SessionSpec(
        runs=(SessionRun("stock", "stock"),),
        with_connector=False,
        kv_cache_memory_bytes=big,
        workloads=dyn,
        **inner,
    )
    over: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        pair = (SessionRun("lru", "lru"), SessionRun("pbkv", "pbkv"))
        pbkv = SessionSpec(
            runs=pair if repeat % 2 == 0 else pair[::-1],
            kv_cache_memory_bytes=big,
            workloads=dyn,
            **inner,
        )
        for spec in (stock, pbkv) if repeat % 2 == 0 else (pbkv, stock):
            for row in _run_in_process(spec, tmp, args.timeout_s):
                over.append({**row, "repeat": repeat * args.overhead_inner + row["repeat"]})
            bar.advance()
        print(f"      round {repeat + 1}/{args.repeats} done", flush=True)
    return (_strip(over), _summarise(over, baseline="stock"), _summarise(over, baseline="lru"))


BLOCK_SIZE = 128  # tokens per KV block (SessionSpec.block_size; vLLM's CPU backend default)


def _knobs(kind: str, overrides: list[str]) -> dict[str, Any]:
    from pbkv.bench.workload import parse_knob
    from pbkv.training.synth import make_config

    knobs = dict(DEFAULT_KNOBS[kind])
    knobs.update(parse_knob(text) for text in overrides)
    try:
        make_config(kind, 0, 1, **knobs)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--synth ({kind}): {exc}") from None
    return knobs


def _cache_bytes(blocks: int, block_bytes: int) -> int:
    """vLLM's ``kv_cache_memory_bytes`` for ``blocks`` usable blocks (+1: the null block)."""
    return (blocks + 1) * block_bytes


def _make_model(out: Path, train_steps: int = 0) -> str:
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    print(f"making the tiny model ({train_steps} training steps) ...", flush=True)
    return str(make_tiny(out, TinyModelConfig(), train_steps=train_steps))


def _run_in_process(
    spec: Any, tmp: Path, timeout_s: float, module: str = "pbkv.bench.vllm_session"
) -> Any:
    """Run a session in a fresh Python process (own process group, killed on timeout):
    ``python -m MODULE SPEC.json OUT.json`` with ``spec`` (a dict, or ``spec.to_dict()``)."""
    spec_path = tmp / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec if isinstance(spec, dict) else spec.to_dict()))
    env = dict(
        os.environ, VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    )
    cmd = [sys.executable, "-m", module, str(spec_path), str(out_path)]
    proc = subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise RuntimeError(f"engine process exceeded {timeout_s} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"engine process failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out_path.read_text())


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("outputs", "cached", "iterations")} for r in rows
    ]


def _summarise(rows: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Per workload and run: median latency and hit rate over repeats, and the median over
    repeats of (baseline median latency / run median latency) measured in the same repeat."""
    out: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}):
        by_run: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["workload"] == workload:
                by_run.setdefault(r["run"], []).append(r)
        base = {r["repeat"]: r for r in by_run.get(baseline, [])}
        summary = {}
        for run_label, runs in by_run.items():

            def ratios(key: str, runs=runs, base=base) -> list[float]:
                return [
                    base[r["repeat"]][key] / r[key]
                    for r in runs
                    if r["repeat"] in base and r[key] > 0
                ]

            speedups, cpu_speedups = ratios("median_latency_s"), ratios("median_cpu_s")
            engine_speedups = (
                ratios("engine_step_s")
                if all("engine_step_s" in r for r in runs)
                and all("engine_step_s" in b for b in base.values())
                else []
            )
            summary[run_label] = {
                "median_latency_s": statistics.median(r["median_latency_s"] for r in runs),
                "mean_latency_s": statistics.median(r["mean_latency_s"] for r in runs),
                "median_cpu_s": statistics.median(r["median_cpu_s"] for r in runs),
                "hit_rate": statistics.median(r["hit_rate"] for r in runs),
                "recomputed_tokens": statistics.median(
                    r["prompt_tokens"] - r["cached_tokens"] for r in runs
                ),
                "host_hit_blocks": statistics.median(r["host_hit_blocks"] for r in runs),
                f"speedup_vs_{baseline}": statistics.median(speedups) if speedups else None,
                f"speedups_vs_{baseline}_per_repeat": [round(s, 4) for s in speedups],
                f"cpu_speedup_vs_{baseline}": (
                    statistics.median(cpu_speedups) if cpu_speedups else None
                ),
                # the engine's own time (inside LLMEngine.step; pbkv's hooks included)
                "engine_step_s": statistics.median(r.get("engine_step_s", 0.0) for r in runs),
                f"engine_speedup_vs_{baseline}": (
                    statistics.median(engine_speedups) if engine_speedups else None
                ),
                f"engine_speedups_vs_{baseline}_per_repeat": [round(s, 4) for s in engine_speedups],
                "pbkv_scheduler_s": statistics.median(
                    r.get("connector", {}).get("scheduler_s", 0.0) for r in runs
                ),
                "host_copy_s": statistics.median(
                    r.get("host_copies", {}).get("copy_s", 0.0) for r in runs
                ),
            }
        out[workload] = summary
    return out


def _print_report(results: dict[str, Any]) -> None:
    for part in ("eviction_summary", "overhead_summary"):
        vs_lru = results.get(f"{part}_vs_lru", {})
        for workload, runs in results.get(part, {}).items():
            print(
                f"{part.split('_')[0]} {workload} (median over rounds; ratios = stock "
                f"median workflow latency / run's, per round)"
            )
            for label, s in runs.items():
                lru = vs_lru.get(workload, {}).get(label, {})
                extra = (
                    f"  x{lru['speedup_vs_lru']:.3f} vs lru "
                    f"{lru['speedups_vs_lru_per_repeat']}"
                    f" (engine step time x{lru['engine_speedup_vs_lru']:.3f})"
                    if lru.get("speedup_vs_lru") and lru.get("engine_speedup_vs_lru")
                    else ""
                )
                print(
                    f"  {label:10s} median {s['median_latency_s']:.3f} s  hit rate "
                    f"{s['hit_rate']:.3f}  recomputed {s['recomputed_tokens']:,.0f} tok  "
                    f"host hits {s['host_hit_blocks']:.0f}  x{s['speedup_vs_stock']:.3f} "
                    f"{s['speedups_vs_stock_per_repeat']}{extra}"
                )
                if s.get("engine_speedup_vs_stock") is not None:
                    print(
                        f"  {'':10s} engine step time {s['engine_step_s']:.2f} s "
                        f"x{s['engine_speedup_vs_stock']:.3f} "
                        f"{s['engine_speedups_vs_stock_per_repeat']}; pbkv hooks "
                        f"{s['pbkv_scheduler_s']:.2f} s, host copies {s['host_copy_s']:.2f} s"
                    )
    if "calibration" not in results:
        return
    calib = results["calibration"]
    print(
        f"cost-model fit: R^2 {calib['iteration_fit_r2']:.3f} over "
        f"{calib['fit_iterations']} iterations"
    )
    for workload, runs in calib["predicted_vs_measured"].items():
        for label, c in runs.items():
            print(
                f"simulator {workload:8s} {label:10s} predicted "
                f"{c['simulated_mean_latency_s']:.3f} s, measured "
                f"{c['measured_mean_latency_s']:.3f} s (error {c['error']:+.1%});"
                f" hit rate {c['simulated_hit_rate']:.3f} vs {c['measured_hit_rate']:.3f}"
            )
    for workload, runs in results["modelled"].items():
        for label, m in runs.items():
            print(
                f"modelled {workload:8s} {label:10s} engine {m['modelled_engine_s']:.2f} s "
                f"(x{m['modelled_speedup_vs_lru']:.3f} vs lru); measured engine cpu/thread "
                f"{m['engine_cpu_s_per_thread']:.2f} s (x{m['engine_cpu_speedup_vs_lru']:.3f})"
            )
    for line in report_lines(results):
        print(line)
