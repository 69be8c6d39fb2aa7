"""``pbkv bench vllm``'s summaries and printed report: per workload and run, medians over
rounds and per-round ratios to a baseline run (``summarise``), and the lines printed at the end
(``print_report``; the checks' lines come from ``vllm_checks.report_lines``)."""

from __future__ import annotations

import statistics
from typing import Any

from pbkv.bench.vllm_checks import report_lines
from pbkv.engine_adapter.vllm.host_tier import DROP_REASONS


def strip_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("outputs", "cached", "iterations")} for r in rows
    ]


def summarise(rows: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
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
                **{
                    f"{kind}_by_reason": {
                        reason: statistics.median(
                            r.get("connector", {}).get(f"{kind}_{reason}", 0) for r in runs
                        )
                        for reason in DROP_REASONS
                    }
                    for kind in ("host_dropped", "host_miss_dropped")
                },
            }
        out[workload] = summary
    return out


def _reasons(counts: dict[str, float]) -> str:
    return ", ".join(f"{reason} {n:.0f}" for reason, n in counts.items())


def print_report(results: dict[str, Any]) -> None:
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
                drops, misses = s["host_dropped_by_reason"], s["host_miss_dropped_by_reason"]
                if any(drops.values()):
                    print(
                        f"  {'':10s} host-tier drops by order: {_reasons(drops)}; "
                        f"requests missing a dropped block: {_reasons(misses)}"
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
