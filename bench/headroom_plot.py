"""``pbkv bench headroom``'s output: the table of grid points and the two heat maps (pbkv /
best-nonpred, best-nonpred / bound), one panel per (host, link, pauses) setting with GPU
capacity across and concurrency down, every cell labelled with its median."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXES_KEYS = ("gpu", "host", "link_gbps", "concurrency", "pauses")
# Predictive baselines pbkv must not fall behind (issue 12: on static workflows pbkv >= kvflow
# everywhere, on dynamic ones pbkv >= cachesage): ``pbkv_vs_<ref>`` when replayed.
REFERENCES = ("kvflow", "cachesage")
MAPS = (
    (
        "pbkv_vs_best_nonpred",
        "headroom_pbkv.png",
        "pbkv vs best non-predictive (x, >1: pbkv faster)",
    ),
    ("headroom", "headroom_bound.png", "headroom: best non-predictive / strict bound (x)"),
)


def print_points(points: list[dict[str, Any]], axes: list[str]) -> None:
    from rich.table import Table

    from pbkv.cli import table_console

    table = Table(title="pbkv bench headroom (median over seeds)")
    cols = (
        "gpu",
        "host",
        "link",
        "conc",
        "pauses",
        "gpu blk",
        "best-nonpred",
        "pbkv x best",
        "per seed",
        "headroom",
        "ideal hr",
        "pbkv share",
        "bound holds",
    )
    refs = [r for r in REFERENCES if any(p.get(f"pbkv_vs_{r}") is not None for p in points)]
    for ref in refs:
        cols += (f"pbkv x {ref}", "per seed")
    for c in cols:
        table.add_column(c, justify="right")
    for p in points:
        vs_refs = [
            cell
            for ref in refs
            for cell in (
                _fmt(p.get(f"pbkv_vs_{ref}"), "{:.3f}"),
                " ".join(f"{v:.3f}" for v in p.get(f"pbkv_vs_{ref}_per_seed", ())),
            )
        ]
        table.add_row(
            *(str(p[k]) for k in AXES_KEYS),
            "/".join(str(b) for b in p["gpu_blocks"]),
            ",".join(f"{k} {v}" for k, v in sorted(p["best_nonpred_counts"].items())),
            _fmt(p["pbkv_vs_best_nonpred"], "{:.3f}"),
            " ".join(f"{v:.3f}" for v in p["pbkv_vs_best_nonpred_per_seed"]),
            _fmt(p["headroom"], "{:.3f}"),
            _fmt(p.get("ideal_headroom"), "{:.3f}"),
            _fmt(p["pbkv_share_recovered"], "{:.1%}"),
            "yes" if p["bound_holds"] else "NO (bug)",
            *vs_refs,
        )
    table_console().print(table)
    losses = [p for p in points if p["pbkv_vs_best_nonpred"] < 1]
    print(
        f"pbkv slower than the best non-predictive baseline at {len(losses)} of "
        f"{len(points)} points"
    )
    for ref in refs:
        behind = [p for p in points if (p.get(f"pbkv_vs_{ref}") or 1.0) < 1]
        print(f"pbkv slower than {ref} at {len(behind)} of {len(points)} points")
    for conc, replayed in saturated(points):
        print(
            f"concurrency {conc} >= the {replayed} replayed workflows: all of them run at once, "
            "the same replay as at any concurrency >= that (raise --num-workflows)"
        )


def saturated(points: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (concurrency, replayed workflows) pairs where the closed loop never queues: the
    concurrency is at least the number of workflows replayed, so a larger one changes nothing
    (the grid's concurrency 64 with the default 24 workflows, 12 replayed, is concurrency 12)."""
    pairs = {
        (p["concurrency"], n)
        for p in points
        for n in p.get("replayed_workflows", ())
        if float(p["concurrency"]) >= n
    }
    return sorted(pairs, key=lambda cn: (float(cn[0]), cn[1]))


def plot_heatmaps(points: list[dict[str, Any]], axes: dict[str, list], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    outline = patheffects.withStroke(linewidth=3, foreground="white")

    from pbkv.bench.headroom import label

    xs = [label(v, "gpu") for v in axes["gpu"]]
    ys = [label(v, "concurrency") for v in axes["concurrency"]]
    hosts = [label(v, "host") for v in axes["host"]]
    panels = [
        (label(link, "link_gbps"), label(pause, "pauses"))
        for link in axes["link_gbps"]
        for pause in axes["pauses"]
    ]
    by_key = {tuple(p[k] for k in AXES_KEYS): p for p in points}
    written = []
    for metric, name, title in MAPS:
        fig, grid = plt.subplots(
            len(hosts),
            len(panels),
            figsize=(
                len(panels) * max(3.4, 1.7 + 0.9 * len(xs)),
                0.6 + len(hosts) * max(2.4, 1.3 + 0.5 * len(ys)),
            ),
            squeeze=False,
        )
        values = [p[metric] for p in points if p.get(metric) is not None]
        lo, hi = (min(values), max(values)) if values else (1.0, 1.0)
        if metric == "pbkv_vs_best_nonpred":
            span = max(abs(lo - 1), abs(hi - 1), 0.01)
            norm = {"vmin": 1 - span, "vmax": 1 + span, "cmap": "RdBu"}
        else:
            norm = {"vmin": 1.0, "vmax": max(hi, 1.01), "cmap": "viridis"}
        for r, host in enumerate(hosts):
            for c, (link, pause) in enumerate(panels):
                ax = grid[r][c]
                cells = [
                    [_cell(by_key.get((x, host, link, y, pause)), metric) for x in xs] for y in ys
                ]
                ax.imshow(
                    [[v if v is not None else float("nan") for v in row] for row in cells],
                    aspect="auto",
                    **norm,
                )
                for i, row in enumerate(cells):
                    for j, v in enumerate(row):
                        ax.text(
                            j,
                            i,
                            "-" if v is None else f"{v:.3f}",
                            ha="center",
                            va="center",
                            path_effects=[outline],
                        )
                ax.set_xticks(range(len(xs)), xs)
                ax.set_yticks(range(len(ys)), ys)
                ax.set_xlabel("GPU (of working set)")
                ax.set_ylabel("concurrency")
                ax.set_title(f"host {host}, {link} GB/s, pause {pause}", fontsize=9)
        fig.suptitle(title)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _cell(point: dict[str, Any] | None, metric: str) -> float | None:
    return None if point is None else point.get(metric)


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
