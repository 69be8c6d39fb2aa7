"""A self-contained HTML report of a ``pbkv bench`` JSON result (``pbkv report``; the dashboard
serves the same page at ``/bench/<name>``).

Self-contained: one file with inline CSS and inline SVG charts, no script, no external asset,
so it opens from disk, from a CI artifact or an e-mail attachment.

What it reads (anything else in the file is shown as-is): top-level scalars become the header
facts; every list of flat records (objects whose values are scalars) becomes a table. Records
that carry a ``policy`` column and a latency or hit-rate measure also get:

- a chart of each measure against each swept parameter (``gpu_blocks``, ``concurrency``), one
  line per policy;
- the comparison with LRU: for each run configuration (the record's other parameters), the
  ratio of LRU's mean latency to each policy's (> 1 means faster than LRU) and the hit-rate
  difference in points.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SWEEP_KEYS = ("gpu_blocks", "concurrency")
PARAM_KEYS = ("workload", "gpu_blocks", "cpu_blocks", "concurrency", "seed")
COLORS = ("#2563eb", "#dc2626", "#0d9488", "#d97706", "#7c3aed", "#4b5563", "#db2777")


class ReportError(ValueError):
    """The bench file cannot be reported on; the message names the file and what is wrong."""


def load_bench(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def render_report(bench: Mapping[str, Any], *, title: str = "pbkv bench") -> str:
    facts = _facts(bench)
    tables = _record_lists(bench)
    if not facts and not tables:
        raise ReportError(f"{title}: no scalar facts and no list of records to report")
    # what a reader came for first (policy runs compared with LRU, shallow summaries); the
    # rest of the file (e.g. a full stats dump) folded away below
    parts = [f"<h1>{_e(title)}</h1>", _facts_html(facts)]
    rest: list[str] = []
    for key, rows in tables:
        if _is_policy_table(rows):
            parts.extend(
                [
                    f"<h2>{_e(key)}</h2>",
                    _lru_comparison_html(rows),
                    *_charts_html(rows),
                    _table_html(rows),
                ]
            )
        else:
            rest.extend([f"<h2>{_e(key)}</h2>", _table_html(rows)])
    for key, nested in _fact_groups(bench):
        shallow = key.count(".") <= 1
        (parts if shallow else rest).append(f"<h2>{_e(key)}</h2>{_facts_html(nested)}")
    if rest:
        parts.append(
            f"<details><summary>Everything else in the file</summary>{''.join(rest)}</details>"
        )
    return _PAGE.format(title=_e(title), body="\n".join(parts))


# -- structure ------------------------------------------------------------------------------
def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _facts(data: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar fields, and lists of scalars joined with commas (e.g. the swept values)."""
    facts = {}
    for key, value in data.items():
        if _is_scalar(value):
            facts[key] = value
        elif isinstance(value, list) and value and all(_is_scalar(v) for v in value):
            facts[key] = ", ".join(_fmt(v) for v in value)
    return facts


def _record_lists(data: Any, prefix: str = "") -> list[tuple[str, list[dict[str, Any]]]]:
    """Every list of flat records in ``data``, depth-first, named by its key path."""
    found: list[tuple[str, list[dict[str, Any]]]] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
                flat = [{k: v for k, v in r.items() if _is_scalar(v)} for r in value]
                if any(flat):
                    found.append((path, flat))
                    continue
            found.extend(_record_lists(value, path))
    return found


def _fact_groups(data: Any, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Nested objects' scalar fields (e.g. a summary's headline), named by key path."""
    groups: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if not isinstance(value, Mapping):
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            scalars = _facts(value)
            if scalars:
                groups.append((path, scalars))
            groups.extend(_fact_groups(value, path))
    return groups


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _is_policy_table(rows: Sequence[Mapping[str, Any]]) -> bool:
    return all("policy" in r for r in rows) and bool(_measures(rows))


def _measures(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric columns worth charting: latencies first, then hit rates."""
    cols = [c for c in _columns(rows) if any(_number(r.get(c)) is not None for r in rows)]
    latency = [c for c in cols if "latency" in c and c not in SWEEP_KEYS]
    hit_rate = [c for c in cols if "hit_rate" in c]
    return latency + hit_rate


def _latency_key(rows: Sequence[Mapping[str, Any]]) -> str | None:
    latency = [c for c in _measures(rows) if "latency" in c]
    preferred = [c for c in latency if "mean" in c]
    return (preferred or latency or [None])[0]


def _config(row: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, row[k]) for k in PARAM_KEYS if k in row)


def _varying(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Run parameters that differ between rows (the others need not be named per row)."""
    return {k for k in PARAM_KEYS if len({repr(r.get(k)) for r in rows}) > 1}


# -- comparison with LRU --------------------------------------------------------------------
def _lru_comparison_html(rows: Sequence[Mapping[str, Any]]) -> str:
    latency = _latency_key(rows)
    hit = next((c for c in _measures(rows) if "gpu_hit_rate" in c), None)
    lru = {_config(r): r for r in rows if r.get("policy") == "lru"}
    if not lru or (latency is None and hit is None):
        return "<p class=muted>No LRU run in this table: no comparison with LRU.</p>"
    head = ["configuration", "policy"]
    if latency:
        head.append(f"LRU {latency} / policy's (× faster than LRU)")
    if hit:
        head.append(f"{hit} − LRU's")
    body = []
    varying = _varying(rows)
    for row in rows:
        base = lru.get(_config(row))
        if base is None or row.get("policy") == "lru":
            continue
        config = ", ".join(f"{k}={v}" for k, v in _config(row) if k in varying) or "(single run)"
        cells = [_e(config), _e(str(row["policy"]))]
        if latency:
            mine, theirs = _number(row.get(latency)), _number(base.get(latency))
            ratio = theirs / mine if mine and theirs is not None else None
            cells.append("–" if ratio is None else f"{ratio:.2f}×")
        if hit:
            mine, theirs = _number(row.get(hit)), _number(base.get(hit))
            diff = None if mine is None or theirs is None else 100.0 * (mine - theirs)
            cells.append("–" if diff is None else f"{diff:+.1f} pp")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not body:
        return ""
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        f"<h3>Comparison with LRU</h3><table class=lru><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


# -- charts ---------------------------------------------------------------------------------
def _charts_html(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    charts = []
    for sweep in SWEEP_KEYS:
        if len({r.get(sweep) for r in rows if _number(r.get(sweep)) is not None}) < 2:
            continue
        # the other swept parameters split a policy's points into separate lines
        others = [k for k in SWEEP_KEYS if k != sweep and len({r.get(k) for r in rows}) > 1]
        for measure in _measures(rows)[:3]:
            series: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for row in rows:
                x, y = _number(row.get(sweep)), _number(row.get(measure))
                if x is not None and y is not None:
                    variant = " ".join(f"{k}={row.get(k)}" for k in others)
                    series.setdefault((str(row["policy"]), variant), []).append((x, y))
            if series:
                charts.append(_line_chart(series, sweep, measure))
    return charts


DASHES = ("", "7 4", "2 3", "10 3 2 3")


def _line_chart(
    series: Mapping[tuple[str, str], list[tuple[float, float]]], x_name: str, y_name: str
) -> str:
    """One line per (policy, variant): the colour names the policy, the dash the variant."""
    # the legend sits right of the plot, one line per series: grow the height to fit it
    width, left, right, top, bottom = 640, 64, 180, 24, 40
    height = max(260, top + 16 * len(series) + bottom)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) or 1.0

    def sx(x: float) -> float:
        return left + (width - left - right) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)

    def sy(y: float) -> float:
        return top + (height - top - bottom) * (1 - (y - y0) / (y1 - y0 if y1 > y0 else 1.0))

    out = [
        f'<svg viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(y_name)} vs {_e(x_name)}">',
        f'<text x="{left}" y="14" class=title>{_e(y_name)} vs {_e(x_name)}</text>',
    ]
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(value):.1f}" '
            f'y2="{sy(value):.1f}" class=grid />'
            f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" text-anchor=end '
            f"class=axis>{value:.3g}</text>"
        )
    for x in sorted(set(xs)):
        out.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor=middle '
            f"class=axis>{_fmt(x)}</text>"
        )
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor=middle '
        f"class=axis>{_e(x_name)}</text>"
    )
    policies = sorted({policy for policy, _ in series})
    variants = sorted({variant for _, variant in series})
    for i, ((policy, variant), pts) in enumerate(sorted(series.items())):
        color = COLORS[policies.index(policy) % len(COLORS)]
        dash = DASHES[variants.index(variant) % len(DASHES)]
        name = f"{policy} {variant}".strip()
        pts = sorted(pts)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline points="{path}" fill=none stroke="{color}" stroke-width=2 '
            f'stroke-dasharray="{dash}" />'
        )
        out.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r=3 fill="{color}" />' for x, y in pts
        )
        ly = top + 16 * i + 8
        out.append(
            f'<line x1="{width - right + 8}" x2="{width - right + 28}" y1="{ly - 4}" '
            f'y2="{ly - 4}" stroke="{color}" stroke-width=2 stroke-dasharray="{dash}" />'
            f'<text x="{width - right + 34}" y="{ly}" class=axis>{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


# -- tables and formatting ------------------------------------------------------------------
def _facts_html(facts: Mapping[str, Any]) -> str:
    if not facts:
        return ""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in facts.items())
    return f"<dl>{items}</dl>"


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return (
        f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        "</table></div>"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }} h3 {{ font-size: 14px; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }}
dt {{ color: #6b7280; }} dd {{ margin: 0; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }}
th, td {{ text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #e3e6eb; }}
th {{ color: #6b7280; font-size: 12px; }}
svg {{ width: 640px; max-width: 100%; display: block; margin: 8px 0; }}
svg .grid {{ stroke: #e3e6eb; }} svg .axis {{ fill: #6b7280; font-size: 11px; }}
svg .title {{ font-size: 12px; font-weight: 600; }}
.muted {{ color: #6b7280; }}
.scroll {{ max-width: 100%; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
