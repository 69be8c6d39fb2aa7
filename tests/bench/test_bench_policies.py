"""A tiny end-to-end ``pbkv bench policies`` run: every policy through the real CacheManager
and the simulated engine, checked for the report's shape and for the oracle bound."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from pbkv.bench import policies
from pbkv.cache_manager.baselines import NON_PREDICTIVE_TWO_TIER
from pbkv.cli import CliError
from pbkv.errors import MissingExtra


def main(argv: list[str]) -> int:
    """``pbkv bench policies ARGV`` without importing every other component's CLI."""
    assert argv[:2] == ["bench", "policies"]
    parser = argparse.ArgumentParser()
    policies.add_arguments(parser)
    return policies.run(parser.parse_args(argv[2:]))


POLICIES = [
    "lru",
    "lru-offload",
    "hicache",
    "vllm-offload",
    "continuum",
    "kvflow",
    "cachesage",
    "pbkv",
    "oracle",
    "ideal",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("policies")
    rc = main(
        [
            "bench",
            "policies",
            "--workload",
            "dynamic",
            "--num-workflows",
            "16",
            "--synth",
            "output_tokens=10,30",
            "--synth",
            "system_tokens=200,800",
            "--gpu-blocks",
            "300,600",
            "--cpu-blocks",
            "200",
            "--concurrency",
            "4",
            "--predictor",
            "markov1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert (out / "policies.png").stat().st_size > 0
    return json.loads((out / "policies.json").read_text())


def test_report_shape(report: dict) -> None:
    assert report["policies"] == POLICIES
    assert (report["num_workflows_train"], report["num_workflows_replayed"]) == (8, 8)
    rows = report["rows"]
    assert [(r["policy"], r["gpu_blocks"], r["concurrency"]) for r in rows] == [
        (p, g, 4) for g in (300, 600) for p in POLICIES
    ]
    for r in rows:
        assert r["workflows"] == 8
        assert 0.0 <= r["gpu_hit_rate"] <= 1.0
        assert r["mean_latency_s"] > 0 and r["p95_latency_s"] >= r["mean_latency_s"] * 0.5
        assert r["speedup_vs_lru"] == pytest.approx(
            next(
                x["mean_latency_s"]
                for x in rows
                if x["policy"] == "lru" and x["gpu_blocks"] == r["gpu_blocks"]
            )
            / r["mean_latency_s"]
        )
    # Every policy replays the same prompts.
    assert len({r["prompt_tokens"] for r in rows}) == 1
    points = report["summary"]["points"]
    assert [(p["gpu_blocks"], p["concurrency"]) for p in points] == [(300, 4), (600, 4)]
    assert "pbkv_recovers_of_oracle" in points[0] and "pbkv_recovers_of_ideal" in points[0]
    for p in points:  # the best non-predictive two-tier baseline, and pbkv's ratio over it
        lat = {name: p[f"{name}_mean_latency_s"] for name in NON_PREDICTIVE_TWO_TIER}
        assert p["best_nonpred"] == min(lat, key=lat.get)
        assert p["pbkv_vs_best_nonpred"] == lat[p["best_nonpred"]] / p["pbkv_mean_latency_s"]
    assert report["summary"]["headline"] in points
    targets = report["summary"]["targets"]
    head = report["summary"]["headline"]
    assert targets["pbkv_speedup_vs_lru_at_headline"] == head["pbkv_speedup_vs_lru"]
    assert targets["pbkv_vs_best_nonpred_at_headline"] == head["pbkv_vs_best_nonpred"]
    assert targets["meets_1_85x_vs_lru"] == (head["pbkv_speedup_vs_lru"] >= 1.85)
    assert targets["pbkv_vs_kvflow_min_over_points"] == min(p["pbkv_vs_kvflow"] for p in points)


def test_oracle_bounds_every_policy_on_hit_rate(report: dict) -> None:
    # A tight CPU tier (200 blocks) so that neither tier holds everything. The oracle bounds
    # the manager's policies; the ideal cache (no capacity limit on cached blocks) bounds it.
    for gpu in (300, 600):
        at = {r["policy"]: r for r in report["rows"] if r["gpu_blocks"] == gpu}
        best = at["oracle"]["gpu_hit_rate"] + at["oracle"]["cpu_hit_rate"]
        for policy in ("lru", "lru-offload", "hicache", "vllm-offload", "kvflow", "pbkv"):
            r = at[policy]
            assert r["gpu_hit_rate"] + r["cpu_hit_rate"] <= best + 1e-9, (gpu, policy)
        assert best <= at["ideal"]["gpu_hit_rate"] + 1e-9


def test_ideal_cache_bounds_every_policy(report: dict) -> None:
    for gpu in (300, 600):
        at = {r["policy"]: r for r in report["rows"] if r["gpu_blocks"] == gpu}
        for policy, r in at.items():
            assert r["recomputed_tokens"] >= at["ideal"]["recomputed_tokens"], (gpu, policy)


def test_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(CliError, match="--workload nope"):
        main(["bench", "policies", "--workload", "nope", "--out", str(tmp_path)])
    with pytest.raises(CliError, match="--gpu-blocks"):
        main(
            [
                "bench",
                "policies",
                "--workload",
                "dynamic",
                "--num-workflows",
                "4",
                "--gpu-blocks",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
    with pytest.raises(CliError, match="--preset"):
        main(
            [
                "bench",
                "policies",
                "--workload",
                "dynamic",
                "--preset",
                "tpu",
                "--out",
                str(tmp_path),
            ]
        )


def test_the_plot_without_matplotlib_fails_at_once_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in a plain `pip install pbkv`
    with pytest.raises(MissingExtra) as err:
        main(["bench", "policies", "--workload", "dynamic", "--out", str(tmp_path / "o")])
    assert str(err.value) == (
        "policies.png (pass --no-plot to skip it) needs matplotlib, which is not installed: "
        "pip install 'pbkv[plot]'"
    )
    assert not (tmp_path / "o").exists()
