"""Helpers for the dashboard's browser tests: Debian's Chromium driven by Playwright, and the
comparison of every figure on the page with ``/metrics``."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update",
                  "--disable-sync"]

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def scrape(url: str) -> dict[SampleKey, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample_key(metric: str) -> SampleKey:
    """Parse a page's ``data-metric`` (``name{label="v",...}``) with Prometheus' own parser."""
    families = list(text_string_to_metric_families(f"{metric} 0\n"))
    (sample,) = families[0].samples
    return sample.name, frozenset(sample.labels.items())


def fmt(value: float | None, format_: str) -> str:
    """What app.js's ``fmt`` shows for ``value`` (same rounding: both round the same double)."""
    if value is None:
        return "–"
    if format_ == "pct":
        return f"{value * 100:.1f}%"
    if format_ == "int":
        return f"{round(value):,}"
    if format_ == "dec":
        return f"{value:.3f}"
    raise AssertionError(f"unknown data-format {format_!r}")


def page_figures(page) -> list[tuple[str, str, str]]:
    """(data-metric, data-format, shown text) of every figure on the page."""
    return page.eval_on_selector_all(
        "[data-metric][data-format]",
        "nodes => nodes.map(n => [n.dataset.metric, n.dataset.format, n.textContent.trim()])")
