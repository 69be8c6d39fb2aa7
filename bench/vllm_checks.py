"""``pbkv bench vllm``'s judgements of the eviction runs: greedy-output identity with stock vLLM
(asserted: the benchmark fails when an output differs) and head-to-head ratios of two runs
that replayed the same schedule (``pbkv+host`` against ``lru-offload+host``: the same connector
and host tier, keeping copies of GPU blocks as vLLM's CPU offloading and SGLang's HiCache do;
only the order in which the host tier keeps and drops blocks differs; ``+xhost``: the same
with the exclusive margin).

Rows are the session rows (``bench/vllm_session.py``): ``outputs`` and ``cached`` map request
ids to its greedy tokens and to vLLM's ``num_cached_tokens`` (GPU prefix hit plus host-tier
load) for the request.
"""

from __future__ import annotations

import statistics
from typing import Any

MAX_LISTED_MISMATCHES = 20  # mismatched requests listed per run (ids, cached prefixes)

# (run, baseline) pairs reported side by side when both ran
HEAD_TO_HEAD = (
    ("pbkv+host", "lru-offload+host"),
    ("pbkv+xhost", "lru-offload+xhost"),
    ("pbkv+xhost", "lru-offload+host"),
    ("lru-offload+xhost", "lru-offload+host"),
    ("pbkv+host", "kvflow+host"),
    ("pbkv", "lru"),
    ("pbkv", "stock"),
)


def output_identity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ``workload/run``, summed over rounds: requests, requests whose greedy tokens differ
    from stock's in the same round, requests whose cached prefix differs from stock's (the
    prefill was split differently) and the mismatches among those, and requests served a
    cached prefix at all; ``examples``: up to ``MAX_LISTED_MISMATCHES`` mismatched requests
    (round, id, cached tokens in the run and in stock, first differing output position), to
    look into. ``identical`` is whether no request differs anywhere."""
    per_run: dict[str, dict[str, Any]] = {}
    for r in rows:
        ref = next(
            x
            for x in rows
            if x["workload"] == r["workload"] and x["run"] == "stock" and x["repeat"] == r["repeat"]
        )
        c = per_run.setdefault(
            f"{r['workload']}/{r['run']}",
            dict.fromkeys(
                (
                    "requests",
                    "mismatched",
                    "cached_differs",
                    "mismatched_cached_differs",
                    "with_cached_prefix",
                    "mismatched_with_cached_prefix",
                ),
                0,
            ),
        )
        examples = c.setdefault("examples", [])
        for rid, tokens in r["outputs"].items():
            wrong = ref["outputs"][rid] != tokens
            differs = r["cached"][rid] != ref["cached"][rid]
            hit = r["cached"][rid] > 0
            c["requests"] += 1
            c["mismatched"] += wrong
            c["cached_differs"] += differs
            c["mismatched_cached_differs"] += wrong and differs
            c["with_cached_prefix"] += hit
            c["mismatched_with_cached_prefix"] += wrong and hit
            if wrong and len(examples) < MAX_LISTED_MISMATCHES:
                stock = ref["outputs"][rid]
                first = next(
                    (i for i, (a, b) in enumerate(zip(tokens, stock, strict=False)) if a != b),
                    min(len(tokens), len(stock)),
                )
                examples.append(
                    {
                        "repeat": r["repeat"],
                        "request": rid,
                        "cached": r["cached"][rid],
                        "stock_cached": ref["cached"][rid],
                        "first_difference": first,
                    }
                )
    return {
        "identical": all(c["mismatched"] == 0 for c in per_run.values()),
        "per_run": per_run,
    }


def head_to_head(rows: list[dict[str, Any]], modelled: dict[str, Any]) -> dict[str, Any]:
    """Per workload and ``HEAD_TO_HEAD`` pair that ran: baseline / run of recomputed prompt
    tokens, of the fitted cost model's engine time and of median workflow latency (wall; the
    machine's load is in it), each the median over rounds of the per-round ratio."""
    out: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}):
        by = {(r["run"], r["repeat"]): r for r in rows if r["workload"] == workload}
        for run, base in HEAD_TO_HEAD:
            rounds = sorted(k[1] for k in by if k[0] == run and (base, k[1]) in by)
            if not rounds:
                continue

            def ratio(key, by=by, rounds=rounds, run=run, base=base) -> float | None:
                pairs = [(key(by[(base, i)]), key(by[(run, i)])) for i in rounds]
                vals = [b / r for b, r in pairs if r > 0]
                return statistics.median(vals) if vals else None

            mod = modelled.get(workload, {})
            out.setdefault(workload, {})[f"{run} vs {base}"] = {
                "recomputed_tokens_ratio": ratio(lambda r: r["prompt_tokens"] - r["cached_tokens"]),
                "modelled_engine_ratio": (
                    mod[base]["modelled_engine_s"] / mod[run]["modelled_engine_s"]
                    if run in mod and base in mod
                    else None
                ),
                "median_latency_ratio": ratio(lambda r: r["median_latency_s"]),
                "rounds": len(rounds),
            }
    return out


def report_lines(results: dict[str, Any]) -> list[str]:
    """The checks' lines of the printed report (a FAIL line when outputs differ)."""
    lines = []
    identity = results.get("greedy_identity")
    if identity is not None:
        for key, c in identity["per_run"].items():
            lines.append(
                f"greedy outputs {key:24s} {c['mismatched']}/{c['requests']} differ from stock "
                f"(cached prefix differs from stock's: {c['cached_differs']} requests, "
                f"{c['mismatched_cached_differs']} of them differ; with a cached prefix: "
                f"{c['with_cached_prefix']}, {c['mismatched_with_cached_prefix']} differ)"
            )
        if not identity["identical"]:
            bad = {k: c["mismatched"] for k, c in identity["per_run"].items() if c["mismatched"]}
            lines.append(f"FAIL: greedy outputs differ from stock vLLM's: {bad}")
    for workload, pairs in results.get("head_to_head", {}).items():
        for name, p in pairs.items():
            fig = ", ".join(
                f"{k.removesuffix('_ratio')} x{v:.3f}"
                for k, v in p.items()
                if k.endswith("_ratio") and v is not None
            )
            lines.append(f"head to head {workload:8s} {name:30s} {fig} ({p['rounds']} rounds)")
    return lines
