"""``pbkv bench vllm``'s simulator calibration: the ``lru`` runs' per-iteration batch shapes and
engine CPU times fitted to the simulator's cost model (non-negative least squares), the fitted
model applied to every run's own schedule (``modelled_engine_s``), and the simulator replaying
the same workflows with it (predicted vs measured). See bench/vllm.py and docs/vllm-adapter.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def kv_bytes_per_token(model_dir: str) -> int:
    """KV bytes per token of a Hugging Face decoder config (keys and values, every layer)."""
    from pbkv.engine_adapter.sim.presets import llama_kv_bytes_per_token

    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return llama_kv_bytes_per_token(
        config["num_hidden_layers"], kv_heads, head_dim, 4 if dtype == "float32" else 2
    )


def modelled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload and run: engine time the fitted cost model gives the run's own schedule
    (noise-free, a function of what was computed) and the measured engine CPU time per thread,
    each as a ratio lru / run (median over repeats)."""
    out: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}):
        mine = [r for r in rows if r["workload"] == workload and "modelled_engine_s" in r]
        base = {r["repeat"]: r for r in mine if r["run"] == "lru"}
        out[workload] = {}
        for label in dict.fromkeys(r["run"] for r in mine):
            runs = [r for r in mine if r["run"] == label]
            out[workload][label] = {
                "modelled_engine_s": statistics.median(r["modelled_engine_s"] for r in runs),
                "modelled_speedup_vs_lru": statistics.median(
                    base[r["repeat"]]["modelled_engine_s"] / r["modelled_engine_s"] for r in runs
                ),
                "engine_cpu_s_per_thread": statistics.median(
                    r["engine_cpu_s_per_thread"] for r in runs
                ),
                "engine_cpu_speedup_vs_lru": statistics.median(
                    base[r["repeat"]]["engine_cpu_s_per_thread"] / r["engine_cpu_s_per_thread"]
                    for r in runs
                ),
            }
    return out


FEATURES = (
    "iteration_overhead_s",
    "prefill_s_per_token",
    "prefill_s_per_token_ctx",
    "decode_s_per_step",
    "decode_s_per_seq",
    "decode_s_per_ctx_token",
)


def _features(prefills: list, decodes: list) -> list[float]:
    return [
        1.0,
        float(sum(n for n, _ in prefills)),
        float(sum(n * (ctx + (n + 1) / 2) for n, ctx in prefills)),
        1.0 if decodes else 0.0,
        float(len(decodes)),
        float(sum(decodes)),
    ]


def calibrate(
    rows: list[dict[str, Any]], workloads: tuple, runs: tuple, spec: Any, model_dir: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fit's figures and the preset file's content."""
    import numpy as np
    from scipy.optimize import nnls

    from pbkv.engine_adapter.sim.cost_model import CostModel

    lru = [r for r in rows if r["run"] == "lru"]
    fit_rows = [r for r in lru if r["repeat"] == 0]  # fit on repeat 0, judge on all
    threads = _omp_threads()
    x = np.array([_features(p, d) for r in fit_rows for _, _, p, d in r["iterations"]])
    # Engine CPU seconds per iteration / engine threads: what the iteration would take on an
    # idle machine (the shared machine's wall clock includes other people's jobs).
    y = np.array([cpu / threads for r in fit_rows for _, cpu, _, _ in r["iterations"]])
    coef, _ = nnls(x, y)
    kv_bytes = kv_bytes_per_token(model_dir)
    copy_bps, copy_source = _copy_bytes_per_s(rows, kv_bytes * spec.block_size)
    fields = dict(zip(FEATURES, (float(c) for c in coef), strict=True))
    # The CPU backend's worker copies host-tier blocks itself at the start of a step: no
    # overlap with compute.
    cost = CostModel(
        kv_bytes_per_token=kv_bytes,
        h2d_bytes_per_s=copy_bps,
        d2h_bytes_per_s=copy_bps,
        transfer_latency_s=0.0,
        transfer_overlap=0.0,
        **fields,
    )
    pred_iter = x @ coef
    for r in (r for r in rows if "iterations" in r):  # the fitted model on each run's schedule
        r["modelled_engine_s"] = float(
            sum(np.array(_features(p, d)) @ coef for _, _, p, d in r["iterations"])
        )
        r["engine_cpu_s_per_thread"] = sum(c for _, c, _, _ in r["iterations"]) / threads
    calib: dict[str, Any] = {
        "fit_target": f"per-iteration process CPU seconds / {threads} engine threads",
        "fit_iterations": int(len(y)),
        "iteration_fit_r2": float(1 - ((y - pred_iter) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        "copy_bandwidth_source": copy_source,
        "cost_model": cost.to_dict(),
        "predicted_vs_measured": _simulate(rows, workloads, runs, spec, cost),
    }
    preset = {
        **cost.to_dict(),
        "tokens_per_block": spec.block_size,
        "_source": "pbkv bench vllm (lru runs, repeat 0, NNLS per iteration; "
        f"copy bandwidth: {copy_source})",
        "_model": model_dir,
        "_iteration_fit_r2": calib["iteration_fit_r2"],
        "_fit_iterations": calib["fit_iterations"],
    }
    return calib, preset


def _omp_threads() -> int:
    """Engine compute threads (``VLLM_CPU_OMP_THREADS_BIND`` such as ``0-1`` or ``0,2``)."""
    spec = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    count = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if hi else 1
    return max(1, count)


def _copy_bytes_per_s(rows: list[dict[str, Any]], block_bytes: int) -> tuple[float, str]:
    """Host-tier copy bandwidth as the adapter achieved it (blocks copied x block bytes / copy
    seconds over every run with a host tier), else a bulk ``torch`` copy measured here."""
    blocks = sum(
        r["host_copies"]["saved_blocks"] + r["host_copies"]["loaded_blocks"]
        for r in rows
        if r.get("host_copies")
    )
    seconds = sum(r["host_copies"]["copy_s"] for r in rows if r.get("host_copies"))
    if blocks and seconds > 0:
        return blocks * block_bytes / seconds, f"adapter host-tier copies ({blocks} blocks)"
    return _measure_copy_bytes_per_s(block_bytes), "bulk torch copy of 256 blocks"


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


def _simulate(
    rows: list[dict[str, Any]], workloads: tuple, runs: tuple, spec: Any, cost: Any
) -> dict[str, Any]:
    """Replay the same workflows in the simulator with the fitted cost model, every run with
    its own policy, predictor and host tier (``stock`` as ``lru``), at the same block count and
    batch budget; compare mean workflow latency with the measurement (median over rounds)."""
    from pbkv.bench.vllm_session import SessionRun, cap_outputs, load_workload
    from pbkv.bench.vllm_simulate import simulate

    threads = _omp_threads()
    out: dict[str, Any] = {}
    by_label = {"stock": SessionRun("stock", "lru")} | {r.label: r for r in runs}
    for w in workloads:
        mine = [r for r in rows if r["workload"] == w.name]
        if not mine:
            continue
        workflows, history = load_workload(w)
        workflows = cap_outputs(workflows, spec.max_output_tokens)
        gpu_blocks = next(r["gpu_blocks"] for r in mine if r["gpu_blocks"])
        out[w.name] = {}
        for label, run in by_label.items():
            measured = [r for r in mine if r["run"] == label]
            if not measured:
                continue
            sim = simulate(
                spec,
                run,
                workflows,
                history,
                cost,
                gpu_blocks=gpu_blocks,
                max_batch_tokens=measured[0]["max_num_batched_tokens"],
            )
            measured_mean = statistics.median(r["mean_latency_s"] for r in measured)
            measured_cpu = statistics.median(r["mean_cpu_s"] / threads for r in measured)
            summary = sim.summary()
            out[w.name][label] = {
                "simulated_mean_latency_s": sim.mean_latency_s,
                "simulated_hit_rate": summary.get("gpu_hit_rate", 0.0)
                + summary.get("cpu_hit_rate", 0.0),
                "measured_hit_rate": statistics.median(r["hit_rate"] for r in measured),
                "simulated_recomputed_tokens": summary.get("recomputed_tokens"),
                "measured_recomputed_tokens": statistics.median(
                    r["prompt_tokens"] - r["cached_tokens"] for r in measured
                ),
                "simulated_makespan_s": summary.get("makespan_s"),
                "measured_wall_s": statistics.median(r["wall_s"] for r in measured),
                "simulated_cpu_hit_rate": summary.get("cpu_hit_rate", 0.0),
                "measured_mean_latency_s": measured_mean,
                "error": sim.mean_latency_s / measured_mean - 1.0,
                "measured_mean_cpu_latency_s": measured_cpu,
                "error_vs_cpu": sim.mean_latency_s / measured_cpu - 1.0,
            }
    return out
