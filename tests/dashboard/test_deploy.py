"""deploy/: the Grafana dashboard and the Prometheus alert rules name only metrics (and labels)
that pbkv exports, and the rules are valid (promtool where installed: CI installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import REPO, STATS, need

from pbkv.dashboard.metrics import PbkvMetrics

DEPLOY = REPO / "deploy"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
# What may stand in a PromQL expression besides metric names, label matchers and numbers.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"[^"]*"')


def exported() -> dict[str, set[str]]:
    """Every series name the registry exposes, with the label names its samples carry."""
    metrics = PbkvMetrics()
    metrics.update_from_stats(STATS)
    metrics.observe_rpc("StepFinished", "OK", 0.002)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        # a counter's series is NAME_total, a histogram's NAME_bucket/_sum/_count
        for name in [family.name + s for s in SUFFIXES.get(family.type, ("",))]:
            names.setdefault(name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each series selector in a PromQL expression."""
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range durations
    out = []
    for name, matchers, call in _SELECTOR.findall(expr):
        if call or name in PROMQL_WORDS:  # a function (histogram_quantile, rate, ...)
            continue
        out.append((name, {m[0] for m in _MATCHER.findall(matchers or "")}))
    return out


def test_selectors_read_names_and_matchers_from_promql():
    assert selectors(
        'histogram_quantile(0.99, sum by (le, method) (rate(x_bucket{method!="A"}[5m])))'
        " and on (engine) y > 0.5"
    ) == [("x_bucket", {"method"}), ("y", set())]


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_every_metric_and_label_in_the_dashboard_and_the_alerts_is_exported():
    names = exported()
    exprs = dashboard_exprs() + [r["expr"] for r in rules()]
    tests = yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())
    exprs += [s["series"] for t in tests["tests"] for s in t["input_series"]]
    assert len(dashboard_exprs()) >= 15
    unknown = [
        (name, labels - names.get(name, set()) - {"instance", "job"})
        for expr in exprs
        for name, labels in selectors(expr)
        if name not in names or labels - names[name] - {"instance", "job"}
    ]
    assert unknown == []


def test_the_alert_rules_follow_the_prometheus_rule_schema():
    doc = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    assert set(doc) == {"groups"}
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s"))
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values())
    assert sorted(r["alert"] for r in rules()) == [
        "PbkvCalibrationDrift",
        "PbkvEnginePlanStale",
        "PbkvPlansFallBackToLru",
    ]


@pytest.mark.parametrize(
    "argv",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]],
    ids=["check", "unit-tests"],
)
def test_promtool_accepts_the_rules_and_their_unit_tests(argv):
    need(shutil.which("promtool") is not None, "promtool (Debian package prometheus)")
    done = subprocess.run(
        ["promtool", *argv], cwd=DEPLOY, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
