"""The strict lower bound (``engine_adapter/sim/bound.py``) at each point of a policy sweep,
and what it says about the policies there.

Per point (GPU blocks, concurrency; CPU blocks and think time are the run's)::

    bound_mean_latency_s      no policy's mean workflow latency is lower (proved offline)
    bound_recomputed_tokens   no policy recomputes fewer prompt tokens
    headroom                  best_nonpred mean latency / bound (>= 1)
    bound_per_request_mean_latency_s, headroom_per_request
                              the same without the bound's finish-order term (each request
                              priced alone, shared work in order): the bound before it had
                              that term, kept to show how much the term tightens
    pbkv_share_recovered      (best_nonpred - pbkv) / (best_nonpred - bound): the share of
                              the room below the best non-predictive baseline pbkv takes
                              (negative where pbkv is slower than it)
    bound_holds               the bound is <= every replayed policy (latency and tokens; the
                              ideal cache, which ignores capacity, on tokens only); a False
                              here is a bug in the bound, reported, not hidden
"""

from __future__ import annotations

from typing import Any

BOUND_KEYS = (
    "bound_mean_latency_s",
    "bound_recomputed_tokens",
    "bound_capacity_binds",
    "headroom",
    "pbkv_share_recovered",
    "bound_holds",
    "bound_per_request_mean_latency_s",
    "headroom_per_request",
)


def point_bound(workflows: list, prompts: Any, preset: Any, spec: Any) -> Any:
    """The ``Bound`` at ``spec``'s point (a ``policy_run.RunSpec``: capacities, concurrency,
    think time, trace pauses; engine defaults otherwise, as ``run_policy``)."""
    from pbkv.engine_adapter.sim.bound import latency_bound
    from pbkv.engine_adapter.sim.engine import EngineConfig
    from pbkv.engine_adapter.sim.replay import ReplayConfig

    return latency_bound(
        workflows,
        prompts,
        preset.cost,
        EngineConfig(
            gpu_blocks=spec.gpu_blocks,
            cpu_blocks=spec.cpu_blocks,
            tokens_per_block=preset.tokens_per_block,
        ),
        ReplayConfig(
            concurrency=spec.concurrency,
            think_time_s=spec.think_time_s,
            trace_pauses=spec.trace_pauses,
        ),
    )


def add_bounds(
    summary: dict[str, Any], rows: list[dict[str, Any]], bounds: dict[tuple[int, int], Any]
) -> None:
    """Adds ``BOUND_KEYS`` to each point of ``summary`` (``summarize``'s) from ``bounds``
    keyed by (gpu_blocks, concurrency)."""
    for point in summary["points"]:
        key = (point["gpu_blocks"], point["concurrency"])
        bound = bounds.get(key)
        if bound is None:
            continue
        at = [r for r in rows if (r["gpu_blocks"], r["concurrency"]) == key]
        point.update(headroom_figures(point, bound, at))
    head = summary.get("headline")
    if head is not None:
        for k in ("headroom", "pbkv_share_recovered"):
            summary["targets"][f"{k}_at_headline"] = head.get(k)


def headroom_figures(point: dict[str, Any], bound: Any, at: list[dict[str, Any]]) -> dict:
    """The ``BOUND_KEYS`` of one point: ``point`` has ``best_nonpred`` and the policies'
    ``<policy>_mean_latency_s``; ``at`` are its rows."""
    lo = bound.mean_latency_s
    per_request = max(bound.critical_path_mean_s, bound.work_mean_s)
    out: dict[str, Any] = {
        "bound_mean_latency_s": lo,
        "bound_recomputed_tokens": bound.recomputed_tokens,
        "bound_capacity_binds": bound.capacity_binds,
        "bound_holds": all(
            (r.get("policy") == "ideal" or r["mean_latency_s"] >= lo * (1 - 1e-9))
            and r["recomputed_tokens"] >= bound.recomputed_tokens
            for r in at
        ),
        "headroom": None,
        "pbkv_share_recovered": None,
        "bound_per_request_mean_latency_s": per_request,
        "headroom_per_request": None,
    }
    best = point.get("best_nonpred")
    if best is not None:
        base = point[f"{best}_mean_latency_s"]
        out["headroom"] = base / lo if lo > 0 else None
        out["headroom_per_request"] = base / per_request if per_request > 0 else None
        pbkv = point.get("pbkv_mean_latency_s")
        if pbkv is not None and base > lo:
            out["pbkv_share_recovered"] = (base - pbkv) / (base - lo)
    return out


def print_bounds(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from pbkv.cli import table_console

    points = [p for p in summary["points"] if "bound_mean_latency_s" in p]
    if not points:
        return
    table = Table(title="headroom: best non-predictive baseline over the strict lower bound")
    for title in (
        "gpu blk",
        "conc",
        "best-nonpred",
        "its mean s",
        "pbkv mean s",
        "bound mean s",
        "headroom",
        "pbkv share",
        "bound recomputed",
        "capacity binds",
        "bound holds",
    ):
        table.add_column(title, justify="right")
    for p in points:
        best = p.get("best_nonpred")
        table.add_row(
            str(p["gpu_blocks"]),
            str(p["concurrency"]),
            best or "-",
            _fmt(p.get(f"{best}_mean_latency_s") if best else None, "{:.3f}"),
            _fmt(p.get("pbkv_mean_latency_s"), "{:.3f}"),
            _fmt(p["bound_mean_latency_s"], "{:.3f}"),
            _fmt(p["headroom"], "{:.3f}x"),
            _fmt(p["pbkv_share_recovered"], "{:.1%}"),
            f"{p['bound_recomputed_tokens']:,}",
            "yes" if p["bound_capacity_binds"] else "no",
            "yes" if p["bound_holds"] else "NO (bug)",
        )
    table_console().print(table)


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
