"""``pbkv bench shadow``: how close shadow mode's estimate comes to what the connector really
saves, on one workload and one schedule.

Two engine processes replay the same synthetic workflows from a cold cache with the same GPU
KV cache (``--kv-blocks``): (1) stock vLLM publishing KV events, with the shadow
(``engine_adapter/shadow``) in the same process estimating pbkv's savings from those events and
the orchestrator calls; (2) vLLM with the pbkv connector (in-process link, no host tier, the
same predictor and policy). The estimate is the shadow's saved prompt tokens (blocks its LRU
pool computes and its pbkv pool does not); the measurement is the connector run's cached
prompt tokens minus the stock run's (vLLM's ``num_cached_tokens``). Prints both and the error.
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
from pbkv.cli import CliError, table_console

TARGET_ERROR = 0.15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", default=None, help="model to serve (default: a fresh `pbkv model make-tiny`)"
    )
    parser.add_argument("--workload", default="dynamic", help="synthetic workload: dynamic, static")
    parser.add_argument(
        "--synth",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a synthetic-workload knob (repeatable)",
    )
    parser.add_argument("--num-workflows", type=int, default=12, help="workflows replayed")
    parser.add_argument(
        "--history-workflows", type=int, default=100, help="workflows the predictor learns from"
    )
    parser.add_argument("--concurrency", type=int, default=6, help="workflows run at once")
    parser.add_argument("--max-output-tokens", type=int, default=8, help="tokens per step")
    parser.add_argument("--kv-blocks", type=int, default=150, help="GPU KV cache size in blocks")
    parser.add_argument("--predictor", default="markov1", help="predictor of both runs")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument(
        "--report-mode",
        default="full",
        choices=("full", "incremental"),
        help="kv_cache_report_mode the stock run's requests ask vLLM for",
    )
    parser.add_argument(
        "--zmq-port", type=int, default=5604, help="KV-event port (and +1 for replay)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/shadow"), help="folder for bench-shadow.json"
    )
    parser.add_argument("--timeout-s", type=float, default=3000.0, help="per engine process")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pbkv.bench.vllm_calibration import kv_bytes_per_token
    from pbkv.bench.vllm_process import (
        BLOCK_SIZE,
        DEFAULT_KNOBS,
        cache_bytes,
        knobs,
        make_model,
        run_in_process,
    )
    from pbkv.bench.vllm_session import SessionRun, SessionSpec, WorkloadSpec

    if args.workload not in DEFAULT_KNOBS:
        raise CliError(f"--workload: unknown {args.workload!r}; known: {sorted(DEFAULT_KNOBS)}")
    for name in ("num_workflows", "concurrency", "max_output_tokens", "kv_blocks"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive")
    if not 1024 <= args.zmq_port <= 65534:
        raise CliError(f"--zmq-port must be in [1024, 65534], got {args.zmq_port}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="pbkv-bench-shadow-")
    model_dir = args.model_dir or make_model(Path(tmp.name) / "tiny")
    workload = WorkloadSpec(
        args.workload,
        f"synth:{args.workload}",
        num_workflows=args.num_workflows,
        seed=args.seed,
        history_workflows=args.history_workflows,
        knobs=knobs(args.workload, args.synth),
    )
    spec = SessionSpec(
        model_dir=model_dir,
        runs=(SessionRun("pbkv", "pbkv"),),
        predictor=args.predictor,
        kv_cache_memory_bytes=cache_bytes(
            args.kv_blocks, kv_bytes_per_token(model_dir) * BLOCK_SIZE
        ),
        block_size=BLOCK_SIZE,
        concurrency=args.concurrency,
        max_output_tokens=args.max_output_tokens,
        warmup=False,
        workloads=(workload,),
    )
    load_before = os.getloadavg()
    with progress(args, 2, "bench shadow", unit="engine process") as bar:
        bar.describe("stock vLLM + shadow")
        shadow_row = run_in_process(
            {"spec": spec.to_dict(), "port": args.zmq_port, "mode": args.report_mode},
            Path(tmp.name),
            args.timeout_s,
            module="pbkv.bench.shadow_session",
        )
        bar.advance()
        bar.describe("vLLM + pbkv connector")
        (connector_row,) = run_in_process(spec, Path(tmp.name), args.timeout_s)
        bar.advance()
    results = compare(shadow_row, connector_row)
    results.update(
        command=" ".join(["pbkv bench shadow", *sys.argv[3:]]),
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        stock=_strip(shadow_row),
        connector=_strip(connector_row),
    )
    path = args.out / "bench-shadow.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    _print(results)
    print(f"wrote {path}")
    tmp.cleanup()
    return 0


def compare(stock: dict[str, Any], connector: dict[str, Any]) -> dict[str, Any]:
    """The shadow's estimate against the connector's measured savings (prompt tokens)."""
    shadow = stock["shadow"]
    measured = connector["cached_tokens"] - stock["cached_tokens"]
    estimated = shadow["saved_tokens"]
    error = abs(estimated - measured) / abs(measured) if measured else None
    same = stock["outputs"] == connector["outputs"]
    return {
        "gpu_blocks": stock["gpu_blocks"],
        "same_schedule_outputs": same,
        "measured_saved_tokens": measured,
        "estimated_saved_tokens": estimated,
        "error": error,
        "target_error": TARGET_ERROR,
        "met": error is not None and error <= TARGET_ERROR,
        "stock_hit_rate": stock["hit_rate"],
        "connector_hit_rate": connector["hit_rate"],
        "shadow_lru_hit_rate": shadow["lru_hit_rate"],
        "shadow_pbkv_hit_rate": shadow["pbkv_hit_rate"],
        "calibration_error": shadow["calibration_error"],
        "estimated_saved_prefill_s": shadow["saved_prefill_s"],
        "measured_engine_step_s_saved": stock["engine_step_s"] - connector["engine_step_s"],
        "lost_batches": stock["subscriber"]["lost_batches"],
        "sync_timeouts": stock.get("sync_timeouts"),  # batches applied after their step's calls
        "stock_preemptions": stock.get("preemptions"),
        "connector_preemptions": connector.get("preemptions"),
        "stock_steps": stock.get("steps"),
        "connector_steps": connector.get("steps"),
        "same_finish_position": same_position(stock["outputs"], connector["outputs"]),
    }


def same_position(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """The share of requests that finished at the same position in both runs (the outputs
    are in finishing order): 1.0 when the connector did not change the schedule's order."""
    if not a:
        return None
    return sum(x == y for x, y in zip(a, b, strict=False)) / len(a)


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("outputs", "iterations", "latencies_s")}


def _print(r: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"shadow estimate vs connector ({r['gpu_blocks']} GPU KV blocks)")
    for col in ("figure", "shadow estimate", "measured"):
        table.add_column(col)
    table.add_row(
        "saved prompt tokens (vs stock)",
        f"{r['estimated_saved_tokens']:,}",
        f"{r['measured_saved_tokens']:,}",
    )
    table.add_row(
        "GPU hit rate, stock / LRU", f"{r['shadow_lru_hit_rate']:.3f}", f"{r['stock_hit_rate']:.3f}"
    )
    table.add_row(
        "GPU hit rate, pbkv", f"{r['shadow_pbkv_hit_rate']:.3f}", f"{r['connector_hit_rate']:.3f}"
    )
    table.add_row(
        "prefill / engine step s saved",
        f"{r['estimated_saved_prefill_s']:.3f}",
        f"{r['measured_engine_step_s_saved']:.3f}",
    )
    table_console().print(table)
    err = "n/a (nothing measured)" if r["error"] is None else f"{r['error']:.1%}"
    print(
        f"error of the estimate: {err} (target <= {r['target_error']:.0%}: "
        f"{'met' if r['met'] else 'MISSED'}); shadow calibration error "
        f"{r['calibration_error']:.1%}; lost batches {r['lost_batches']}; same outputs "
        f"{r['same_schedule_outputs']}; requests finishing at the same position "
        f"{r['same_finish_position']:.0%}; preemptions stock {r['stock_preemptions']}, "
        f"connector {r['connector_preemptions']}"
    )
