"""The dashboard page in headless Debian Chromium (Playwright), and its figures read back.

``dashboard_page(tmp_path, chromium, url)`` opens the page once, waits for its first update and
yields (page, errors the page raised, its figures, a ``/metrics`` scrape taken right after).
A figure is an element with ``data-metric`` (a Prometheus sample) and ``data-format``;
``mismatches`` lists the figures whose text differs from their sample formatted the way the
page's ``fmt`` does (empty: the page shows exactly ``/metrics``).
"""

from __future__ import annotations

import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import REPO

ARTIFACTS = REPO / "artifacts"  # screenshots
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def scrape(url: str) -> dict[SampleKey, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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
    rows = page.eval_on_selector_all(
        "[data-metric][data-format]",
        "nodes => nodes.map(n => [n.dataset.metric, n.dataset.format, n.textContent.trim()])",
    )
    return [tuple(row) for row in rows]


def open_browser(pw, profile: Path, chromium: Path):
    return pw.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(chromium),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 1000},
    )


@contextmanager
def dashboard_page(tmp_path: Path, chromium: Path, url: str):
    """A browser page on the dashboard at ``url``, loaded once: yields (page, errors the page
    raised, its figures, a /metrics scrape taken right after)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = open_browser(pw, tmp_path / "profile", chromium)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            figures = load_dashboard(page, url)
            yield page, errors, figures, scrape(url + "metrics")
        finally:
            context.close()


def load_dashboard(page, url: str) -> list[tuple[str, str, str]]:
    page.goto(url, wait_until="load")
    page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=15_000)
    return page_figures(page)


def mismatches(figures: list[tuple[str, str, str]], metrics: dict[SampleKey, float]) -> list:
    """Figures whose text differs from their /metrics sample formatted like the page."""
    return [
        (metric, text, fmt(metrics.get(sample_key(metric)), format_))
        for metric, format_, text in figures
        if text != fmt(metrics.get(sample_key(metric)), format_)
    ]


def screenshot(page, name: str) -> Path:
    """The whole page saved as ``artifacts/<name>``; returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
