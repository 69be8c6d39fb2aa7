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
   ones. ``--calibration-out`` writes the preset file
   (``engine_adapter/sim/calibration/vllm-cpu.json``).

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

DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    # Sized for a 2-layer model on 2 shared CPU cores: a workflow takes seconds, not minutes.
    "dynamic": {"system_tokens": [384, 1024], "preamble_tokens": 128, "new_tokens": [32, 128],
                "output_tokens": [8, 32], "history_growth": 0.5, "max_fanout": 2,
                "max_loops": 2, "num_apps": 2},
    "static": {"system_tokens": [512, 1536], "new_tokens": [32, 128], "output_tokens": [8, 32],
               "pipeline_len": [4, 5]},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None,
                        help="model to serve (default: a fresh `pbkv model make-tiny`)")
    parser.add_argument("--workloads", default="dynamic,static")
    parser.add_argument("--num-workflows", type=int, default=12)
    parser.add_argument("--history-workflows", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--max-output-tokens", type=int, default=8)
    parser.add_argument("--kv-cache-mb", type=float, default=4.0,
                        help="eviction runs: KV cache size (tiny model: 1 KiB per token)")
    parser.add_argument("--big-kv-cache-mb", type=float, default=96.0,
                        help="overhead runs: a KV cache that holds everything")
    parser.add_argument("--host-tier-blocks", type=int, default=512)
    parser.add_argument("--predictor", default="markov1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", default="bench-vllm.json", help="results JSON")
    parser.add_argument("--calibration-out", default=None,
                        help="write the fitted vllm-cpu preset here")
    parser.add_argument("--timeout-s", type=float, default=3000.0, help="per engine process")


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError
    from pbkv.engine_adapter.vllm.session import RunSpec, SessionSpec, WorkloadSpec

    kinds = [k.strip() for k in args.workloads.split(",") if k.strip()]
    bad = [k for k in kinds if k not in DEFAULT_KNOBS]
    if bad or not kinds:
        raise CliError(f"--workloads: unknown {bad}; known: {sorted(DEFAULT_KNOBS)}")
    for name in ("num_workflows", "concurrency", "repeats", "max_output_tokens"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive")
    tmp = tempfile.TemporaryDirectory(prefix="pbkv-bench-vllm-")
    model_dir = args.model_dir or _make_model(Path(tmp.name) / "tiny")
    workloads = tuple(WorkloadSpec(k, f"synth:{k}", num_workflows=args.num_workflows,
                                   seed=args.seed, history_workflows=args.history_workflows,
                                   knobs=DEFAULT_KNOBS[k]) for k in kinds)
    common = dict(model_dir=model_dir, predictor=args.predictor, concurrency=args.concurrency,
                  max_output_tokens=args.max_output_tokens, repeats=args.repeats)
    eviction = SessionSpec(
        runs=(RunSpec("lru", "lru"), RunSpec("pbkv", "pbkv"),
              RunSpec("pbkv+host", "pbkv", host_tier_blocks=args.host_tier_blocks)),
        kv_cache_memory_bytes=int(args.kv_cache_mb * 2**20), workloads=workloads,
        log_iterations=True, **common)
    results: dict[str, Any] = {"command": " ".join(["pbkv bench vllm", *sys.argv[3:]]),
                               "model_dir": model_dir, "args": vars(args) | {"func": None},
                               "load_average_before": os.getloadavg()}
    print(f"[1/3] eviction runs ({args.kv_cache_mb} MiB KV) ...", flush=True)
    rows = _run_in_process(eviction, Path(tmp.name), args.timeout_s)
    results["eviction"] = _strip(rows)
    results["eviction_summary"] = _summarise(rows, baseline="lru")
    _check_same_outputs(rows, results)
    if not args.skip_overhead and "dynamic" in kinds:
        print(f"[2/3] overhead runs ({args.big_kv_cache_mb} MiB KV) ...", flush=True)
        dyn = tuple(w for w in workloads if w.name == "dynamic")
        big = int(args.big_kv_cache_mb * 2**20)
        one = {**common, "repeats": 1}
        stock = SessionSpec(runs=(RunSpec("stock", "stock"),), with_connector=False,
                            kv_cache_memory_bytes=big, workloads=dyn, **one)
        pbkv = SessionSpec(runs=(RunSpec("pbkv", "pbkv"),), kv_cache_memory_bytes=big,
                           workloads=dyn, **one)
        over = []
        # One process per engine; pairs alternate which goes first (load drifts over time).
        for repeat in range(args.repeats):
            pair = (stock, pbkv) if repeat % 2 == 0 else (pbkv, stock)
            for spec in pair:
                for row in _run_in_process(spec, Path(tmp.name), args.timeout_s):
                    over.append({**row, "repeat": repeat})
        results["overhead"] = _strip(over)
        results["overhead_summary"] = _summarise(over, baseline="stock")
    print("[3/3] calibration ...", flush=True)
    results["calibration"] = _calibrate(rows, workloads, eviction, model_dir,
                                        args.calibration_out)
    results["modelled"] = _modelled(rows)
    results["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1))
    _print_report(results)
    print(f"wrote {args.out}")
    tmp.cleanup()
    return 0


def _make_model(out: Path) -> str:
    from pbkv.engine_adapter.models import TinyModelConfig, make_tiny

    return str(make_tiny(out, TinyModelConfig()))


def _run_in_process(spec: Any, tmp: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Run a session in a fresh Python process (own process group, killed on timeout)."""
    spec_path = tmp / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec.to_dict()))
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=os.environ.get(
        "VLLM_CPU_OMP_THREADS_BIND", "0-1"))
    cmd = [sys.executable, "-m", "pbkv.engine_adapter.vllm.session", str(spec_path),
           str(out_path)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
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
    return [{k: v for k, v in r.items() if k not in ("outputs", "iterations")} for r in rows]


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
                return [base[r["repeat"]][key] / r[key] for r in runs
                        if r["repeat"] in base and r[key] > 0]

            speedups, cpu_speedups = ratios("median_latency_s"), ratios("median_cpu_s")
            summary[run_label] = {
                "median_latency_s": statistics.median(r["median_latency_s"] for r in runs),
                "mean_latency_s": statistics.median(r["mean_latency_s"] for r in runs),
                "median_cpu_s": statistics.median(r["median_cpu_s"] for r in runs),
                "hit_rate": statistics.median(r["hit_rate"] for r in runs),
                "recomputed_tokens": statistics.median(r["prompt_tokens"] - r["cached_tokens"]
                                                       for r in runs),
                "host_hit_blocks": statistics.median(r["host_hit_blocks"] for r in runs),
                f"speedup_vs_{baseline}": statistics.median(speedups) if speedups else None,
                f"speedups_vs_{baseline}_per_repeat": [round(s, 4) for s in speedups],
                f"cpu_speedup_vs_{baseline}": (statistics.median(cpu_speedups)
                                               if cpu_speedups else None),
            }
        out[workload] = summary
    return out


def _check_same_outputs(rows: list[dict[str, Any]], results: dict[str, Any]) -> None:
    """Greedy outputs must not depend on the cache policy (recorded, not asserted: the
    correctness tests assert it)."""
    mismatches: dict[str, int] = {}
    for r in rows:
        ref = next(x for x in rows if x["workload"] == r["workload"] and x["run"] == "lru"
                   and x["repeat"] == r["repeat"])
        key = f'{r["workload"]}/{r["run"]}'
        mismatches[key] = mismatches.get(key, 0) + sum(
            1 for rid, toks in r["outputs"].items() if ref["outputs"][rid] != toks)
    results["greedy_output_mismatches"] = mismatches
    results["requests_per_replay"] = {r["workload"]: r["requests"] for r in rows}


def _modelled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload and run: engine time the fitted cost model gives the run's own schedule
    (noise-free, a function of what was computed) and the measured engine CPU time per thread,
    each as a ratio lru / run (median over repeats)."""
    out: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}):
        mine = [r for r in rows if r["workload"] == workload]
        base = {r["repeat"]: r for r in mine if r["run"] == "lru"}
        out[workload] = {}
        for label in dict.fromkeys(r["run"] for r in mine):
            runs = [r for r in mine if r["run"] == label]
            out[workload][label] = {
                "modelled_engine_s": statistics.median(r["modelled_engine_s"] for r in runs),
                "modelled_speedup_vs_lru": statistics.median(
                    base[r["repeat"]]["modelled_engine_s"] / r["modelled_engine_s"]
                    for r in runs),
                "engine_cpu_s_per_thread": statistics.median(
                    r["engine_cpu_s_per_thread"] for r in runs),
                "engine_cpu_speedup_vs_lru": statistics.median(
                    base[r["repeat"]]["engine_cpu_s_per_thread"] / r["engine_cpu_s_per_thread"]
                    for r in runs),
            }
    return out


FEATURES = ("iteration_overhead_s", "prefill_s_per_token", "prefill_s_per_token_ctx",
            "decode_s_per_step", "decode_s_per_seq", "decode_s_per_ctx_token")


def _features(prefills: list, decodes: list) -> list[float]:
    return [1.0, float(sum(n for n, _ in prefills)),
            float(sum(n * (ctx + (n + 1) / 2) for n, ctx in prefills)),
            1.0 if decodes else 0.0, float(len(decodes)), float(sum(decodes))]


def _calibrate(rows: list[dict[str, Any]], workloads: tuple, spec: Any, model_dir: str,
               out_path: str | None) -> dict[str, Any]:
    import numpy as np
    from scipy.optimize import nnls

    from pbkv.engine_adapter.models import tiny_config_of
    from pbkv.engine_adapter.sim.cost_model import CostModel

    lru = [r for r in rows if r["run"] == "lru"]
    fit_rows = [r for r in lru if r["repeat"] == 0]  # fit on repeat 0, judge on all
    threads = _omp_threads()
    x = np.array([_features(p, d) for r in fit_rows for _, _, p, d in r["iterations"]])
    # Engine CPU seconds per iteration / engine threads: what the iteration would take on an
    # idle machine (the shared machine's wall clock includes other people's jobs).
    y = np.array([cpu / threads for r in fit_rows for _, cpu, _, _ in r["iterations"]])
    coef, _ = nnls(x, y)
    tiny = tiny_config_of(model_dir)
    kv_bytes = tiny.kv_bytes_per_token if tiny else 2 * 2 * 2 * 64 * 2
    copy_bps = _measure_copy_bytes_per_s(kv_bytes * spec.block_size)
    fields = dict(zip(FEATURES, (float(c) for c in coef), strict=True))
    cost = CostModel(kv_bytes_per_token=kv_bytes, h2d_bytes_per_s=copy_bps,
                     d2h_bytes_per_s=copy_bps, transfer_latency_s=0.0, **fields)
    pred_iter = x @ coef
    for r in rows:  # the fitted model applied to every run's own measured schedule
        r["modelled_engine_s"] = float(sum(
            np.array(_features(p, d)) @ coef for _, _, p, d in r["iterations"]))
        r["engine_cpu_s_per_thread"] = sum(c for _, c, _, _ in r["iterations"]) / threads
    calib: dict[str, Any] = {
        "fit_target": f"per-iteration process CPU seconds / {threads} engine threads",
        "fit_iterations": int(len(y)),
        "iteration_fit_r2": float(1 - ((y - pred_iter) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        "cost_model": cost.to_dict(),
        "predicted_vs_measured": _simulate(lru, workloads, spec, cost),
    }
    if out_path:
        payload = {**cost.to_dict(), "tokens_per_block": spec.block_size,
                   "_source": "pbkv bench vllm (lru runs, repeat 0, NNLS per iteration)",
                   "_model": model_dir, "_iteration_fit_r2": calib["iteration_fit_r2"],
                   "_fit_iterations": calib["fit_iterations"]}
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(payload, indent=2) + "\n")
    return calib


def _omp_threads() -> int:
    """Engine compute threads (``VLLM_CPU_OMP_THREADS_BIND`` such as ``0-1`` or ``0,2``)."""
    spec = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    count = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if hi else 1
    return max(1, count)


def _measure_copy_bytes_per_s(block_bytes: int, num_blocks: int = 256) -> float:
    """Host-tier copy bandwidth on this machine (CPU memcpy of whole blocks), median of 5."""
    import torch

    src = torch.empty(num_blocks, block_bytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return num_blocks * block_bytes / statistics.median(times)


def _simulate(lru_rows: list[dict[str, Any]], workloads: tuple, spec: Any,
              cost: Any) -> dict[str, Any]:
    """Replay the same workflows in the simulator (plain LRU, same block count and batch
    budget) with the fitted cost model; compare mean workflow latency with the measurement."""
    from pbkv.engine_adapter.sim.engine import EngineConfig, SimEngine
    from pbkv.engine_adapter.sim.replay import ReplayConfig, replay
    from pbkv.engine_adapter.vllm.session import cap_outputs, load_workload

    out = {}
    for w in workloads:
        measured = [r for r in lru_rows if r["workload"] == w.name]
        if not measured:
            continue
        workflows = cap_outputs(load_workload(w)[0], spec.max_output_tokens)
        engine = SimEngine(EngineConfig(gpu_blocks=measured[0]["gpu_blocks"],
                                        tokens_per_block=spec.block_size,
                                        max_batch_seqs=max(8, spec.concurrency * 4),
                                        max_batch_tokens=measured[0]["max_num_batched_tokens"]),
                           cost)
        sim = replay(engine, workflows, ReplayConfig(concurrency=spec.concurrency,
                                                     vocab_size=4096))
        measured_mean = statistics.median(r["mean_latency_s"] for r in measured)
        threads = _omp_threads()
        measured_cpu = statistics.median(r["mean_cpu_s"] / threads for r in measured)
        out[w.name] = {"simulated_mean_latency_s": sim.mean_latency_s,
                       "measured_mean_latency_s": measured_mean,
                       "error": sim.mean_latency_s / measured_mean - 1.0,
                       "measured_mean_cpu_latency_s": measured_cpu,
                       "error_vs_cpu": sim.mean_latency_s / measured_cpu - 1.0}
    return out


def _print_report(results: dict[str, Any]) -> None:
    for part in ("eviction_summary", "overhead_summary"):
        for workload, runs in results.get(part, {}).items():
            print(f"{part.split('_')[0]:9s} {workload}")
            for label, s in runs.items():
                key = next(k for k in s if k.startswith("speedup_vs_") and "per_repeat" not in k)
                sp = s[key]
                cpu_key = "cpu_" + key
                print(f"  {label:10s} median latency {s['median_latency_s']:.3f} s "
                      f"(cpu {s['median_cpu_s']:.3f} s)  hit rate {s['hit_rate']:.3f}  "
                      f"recomputed {s['recomputed_tokens']:.0f} tok  "
                      f"host hits {s['host_hit_blocks']:.0f}  {key} {sp:.3f} "
                      f"(cpu {s[cpu_key]:.3f})" if sp is not None else "")
    print(f"greedy output mismatches vs lru (all repeats): "
          f"{results.get('greedy_output_mismatches')} of {results.get('requests_per_replay')} "
          f"requests per replay")
    for workload, c in results["calibration"]["predicted_vs_measured"].items():
        print(f"simulator {workload}: predicted {c['simulated_mean_latency_s']:.3f} s, "
              f"measured {c['measured_mean_latency_s']:.3f} s wall (error {c['error']:+.1%}), "
              f"{c['measured_mean_cpu_latency_s']:.3f} s cpu/threads "
              f"(error {c['error_vs_cpu']:+.1%})")
    print(f"iteration fit R^2 {results['calibration']['iteration_fit_r2']:.3f}")
    for workload, runs in results["modelled"].items():
        for label, m in runs.items():
            print(f"modelled {workload:8s} {label:10s} engine {m['modelled_engine_s']:.2f} s "
                  f"(x{m['modelled_speedup_vs_lru']:.3f} vs lru); measured engine cpu/thread "
                  f"{m['engine_cpu_s_per_thread']:.2f} s (x{m['engine_cpu_speedup_vs_lru']:.3f})")
