"""``pbkv demo``'s comparison: pbkv's ratio over the best non-predictive two-tier baseline
(best-nonpred: the fastest of the replayed ``NON_PREDICTIVE_TWO_TIER`` policies, each with the
same host tier as pbkv) first, then over LRU without a host tier; and the table."""

from __future__ import annotations

from typing import Any

# The tier-less reference: ``lru`` keeps no CPU copies even when the engine has a host tier.
TIERLESS = "lru"


def best_nonpred(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The replayed non-predictive two-tier baseline with the lowest mean latency (None when
    no such baseline was replayed)."""
    from pbkv.cache_manager.baselines import NON_PREDICTIVE_TWO_TIER

    candidates = [r for r in rows if r["policy"] in NON_PREDICTIVE_TWO_TIER]
    return min(candidates, key=lambda r: r["mean_latency_s"]) if candidates else None


def comparison(rows: list[dict[str, Any]], pbkv: dict[str, Any]) -> dict[str, Any]:
    """pbkv's mean-latency ratios: ``pbkv_vs_best_nonpred`` (best-nonpred's mean latency over
    pbkv's; None without a non-predictive baseline) and ``pbkv_vs_lru_no_host_tier``."""
    best = best_nonpred(rows)
    lru = next(r for r in rows if r["policy"] == TIERLESS)
    return {
        "best_nonpred": None if best is None else best["policy"],
        "pbkv_vs_best_nonpred": (
            None if best is None else best["mean_latency_s"] / pbkv["mean_latency_s"]
        ),
        "pbkv_vs_lru_no_host_tier": lru["mean_latency_s"] / pbkv["mean_latency_s"],
    }


def headline(cmp: dict[str, Any]) -> str:
    """The demo's one-line result, the ratio over best-nonpred first."""
    parts = []
    if cmp["pbkv_vs_best_nonpred"] is not None:
        parts.append(
            f"pbkv vs best-nonpred ({cmp['best_nonpred']}, same host tier): "
            f"{cmp['pbkv_vs_best_nonpred']:.3f}x lower mean workflow latency"
        )
    parts.append(f"vs LRU without a host tier: {cmp['pbkv_vs_lru_no_host_tier']:.3f}x")
    return "; ".join(parts)


def print_results(rows: list[dict[str, Any]]) -> None:
    """The table: every row's hit rates, prefetch precision, host-link bytes, latencies and
    its ratio over best-nonpred and over tier-less LRU (that baseline's latency / the row's)."""
    from rich.table import Table

    from pbkv.cli import table_console

    lru = next(r for r in rows if r["policy"] == TIERLESS)
    best = best_nonpred(rows)
    table = Table(title="pbkv demo: held-out real workflows, simulated engine")
    cols = ["policy", "via", "GPU hit", "CPU hit", "prefetch precision", "host-link MB"]
    cols += ["mean latency s", "p95 latency s"]
    if best is not None:
        cols.append(f"x best-nonpred ({best['policy']})")
    cols.append("x LRU (no host tier)")
    for col in cols:
        table.add_column(col, justify="left" if col in ("policy", "via") else "right")
    for r in rows:
        name = r["policy"] + (" (no host tier)" if r["policy"] == TIERLESS else "")
        cells = [name, r["via"], pct(r.get("gpu_hit_rate")), pct(r.get("cpu_hit_rate"))]
        cells.append(pct(r.get("prefetch_precision")))
        xfer = r.get("transfer_bytes")
        cells.append("-" if xfer is None else f"{xfer / 1e6:,.0f}")
        cells += [f"{r['mean_latency_s']:.3f}", f"{r['p95_latency_s']:.3f}"]
        if best is not None:
            cells.append(f"{best['mean_latency_s'] / r['mean_latency_s']:.3f}x")
        cells.append(f"{lru['mean_latency_s'] / r['mean_latency_s']:.3f}x")
        table.add_row(*cells)
    table_console().print(table)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
