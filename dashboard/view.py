"""The JSON the page renders (``/api/stats``), built from the same parsed ``Stats`` that
``/metrics`` exports, so every number on the page has a ``/metrics`` twin.

The page only formats: it computes no rate itself. ``docs/dashboard.md`` maps each field to
its metric name.
"""

from __future__ import annotations

from typing import Any

from pbkv.dashboard.schema import TIERS, ScopeCounts, ShadowFigures, Stats


def build_view(
    stats: Stats, *, history: dict[str, Any], rpc: list[dict[str, Any]], generated_s: float
) -> dict[str, Any]:
    baseline = stats.baseline_lru
    return {
        "generated_s": generated_s,
        "policy": stats.policy,
        "fallback_lru": stats.fallback_lru,
        "active_workflows": stats.active_workflows,
        "overall": _scope(stats.overall),
        "tokens": _tokens(stats),
        "progress": _progress(stats),
        "baseline_lru": None
        if baseline is None
        else {
            "policy": baseline.policy or "lru",
            "overall": _scope(baseline.overall),
            "tokens": _tokens(baseline),
            "progress": _progress(baseline),
        },
        "prefetch": {
            "precision": stats.prefetch_precision,
            "recall": stats.prefetch_recall,
            "prefetched_blocks": stats.prefetched_blocks,
            "used_blocks": stats.prefetch_used_blocks,
            "wasted_blocks": stats.prefetch_wasted_blocks,
        },
        "predictor": {
            "top1_accuracy": stats.top1_accuracy,
            "calibration": stats.calibration,
            "calibration_metric": stats.calibration_metric,
            "scored_steps": stats.scored_steps,
            "errors": stats.predictor_errors,
        },
        "blocks": {
            "gpu_cached": stats.gpu_blocks_cached,
            "cpu_cached": stats.cpu_blocks_cached,
            "directory": stats.directory_blocks,
            "plans_built": stats.plans_built,
        },
        "service": [{"name": name, "value": value} for name, value in stats.service],
        "engines": [{"name": name, **_scope(scope)} for name, scope in stats.per_engine],
        "apps": [{"name": name, **_scope(scope)} for name, scope in stats.per_app],
        "agents": [{"name": name, **_scope(scope)} for name, scope in stats.per_agent],
        "top_kept": [dict(block) for block in stats.top_kept],
        "shadow": None if stats.shadow is None else _shadow(stats.shadow),
        "rpc": rpc,
        "history": history,
        "cluster": _cluster(stats),
    }


def _shadow(shadow: ShadowFigures) -> dict[str, Any]:
    return {
        "engine_id": shadow.engine_id,
        "accesses": shadow.accesses,
        "lookup_blocks": shadow.lookup_blocks,
        "hit_rate": {"lru": shadow.lru_hit_rate, "pbkv": shadow.pbkv_hit_rate},
        "computed_blocks": {
            "observed": shadow.observed_computed_blocks,
            "lru": shadow.lru_computed_blocks,
            "pbkv": shadow.pbkv_computed_blocks,
        },
        "saved_tokens": shadow.saved_tokens,
        "saved_prefill_s": shadow.saved_prefill_s,
        "calibration_error": shadow.calibration_error,
        "lost_batches": shadow.lost_batches,
    }


def _cluster(stats: Stats) -> dict[str, Any] | None:
    """Cluster mode: each replica's hit rate over the engines it serves, and the whole
    service's (replicas serve disjoint engines, so their counts add up)."""
    if not stats.cluster:
        return None
    rows = [dict(row) for row in stats.cluster]
    total = {
        k: sum(int(r.get(k) or 0) for r in rows) for k in ("gpu_lookups", "gpu_hits", "cpu_hits")
    }
    for r in [*rows, total]:
        lookups = int(r.get("gpu_lookups") or 0)
        hits = int(r.get("gpu_hits") or 0) + int(r.get("cpu_hits") or 0)
        r["hit_rate"] = hits / lookups if lookups else None
    return {"replicas": rows, "total": total}


def _scope(scope: ScopeCounts) -> dict[str, Any]:
    out: dict[str, Any] = {"lookup_blocks": scope.lookup_blocks}
    for tier in TIERS:
        out[tier] = {"hit_blocks": scope.hit_blocks(tier), "hit_rate": scope.hit_rate(tier)}
    return out


def _progress(stats: Stats) -> dict[str, int | None]:
    return {"workflows_done": stats.workflows_done, "workflows_total": stats.workflows_total}


def _tokens(stats: Stats) -> dict[str, Any]:
    return {
        "reused": stats.reused_tokens,
        "recomputed": stats.recomputed_tokens,
        "reused_fraction": stats.reused_fraction,
    }
