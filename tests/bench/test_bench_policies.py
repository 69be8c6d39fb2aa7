"""A tiny end-to-end ``pbkv bench policies`` run: every policy through the real CacheManager
and the simulated engine, checked for the report's shape and for the strict bound."""

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
    "clairvoyant",
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
    assert "pbkv_recovers_of_clairvoyant" in points[0] and "pbkv_recovers_of_ideal" in points[0]
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


def test_clairvoyant_beats_every_policy_on_hit_rate_here(report: dict) -> None:
    # A tight CPU tier (200 blocks) so that neither tier holds everything. Here the
    # clairvoyant policy (formerly "oracle"; not a bound in general, see
    # test_strict_bound_is_below_every_policy) hits most; the ideal cache more.
    for gpu in (300, 600):
        at = {r["policy"]: r for r in report["rows"] if r["gpu_blocks"] == gpu}
        best = at["clairvoyant"]["gpu_hit_rate"] + at["clairvoyant"]["cpu_hit_rate"]
        for policy in ("lru", "lru-offload", "hicache", "vllm-offload", "kvflow", "pbkv"):
            r = at[policy]
            assert r["gpu_hit_rate"] + r["cpu_hit_rate"] <= best + 1e-9, (gpu, policy)
        assert best <= at["ideal"]["gpu_hit_rate"] + 1e-9


def test_strict_bound_is_below_every_policy(report: dict) -> None:
    for p in report["summary"]["points"]:
        at = [r for r in report["rows"] if r["gpu_blocks"] == p["gpu_blocks"]]
        assert len(at) == len(POLICIES)
        for r in at:
            assert r["mean_latency_s"] >= p["bound_mean_latency_s"], (p["gpu_blocks"], r["policy"])
            assert r["recomputed_tokens"] >= p["bound_recomputed_tokens"], r["policy"]
        assert p["bound_holds"] is True
        best = p[f"{p['best_nonpred']}_mean_latency_s"]
        assert p["headroom"] == best / p["bound_mean_latency_s"] >= 1.0
        assert p["pbkv_share_recovered"] == pytest.approx(
            (best - p["pbkv_mean_latency_s"]) / (best - p["bound_mean_latency_s"])
        )
    targets = report["summary"]["targets"]
    assert targets["headroom_at_headline"] == report["summary"]["headline"]["headroom"]


def test_old_policy_name_is_an_alias(capsys) -> None:
    assert policies.policy_list("lru,oracle,pbkv") == ["lru", "clairvoyant", "pbkv"]
    assert "policy 'oracle' is now called 'clairvoyant'" in capsys.readouterr().err
    assert policies.policy_list("oracle,clairvoyant") == ["clairvoyant"]


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


def test_table_shows_prefetch_precision_and_host_link_bytes_per_policy(report: dict, capsys):
    """Issue 12: every policy's row prints its prefetch precision and the bytes it moved over
    the host link, the same figures as policies.json."""
    from pbkv.bench.policies_report import print_table

    print_table(report["rows"], report["summary"])
    out = capsys.readouterr().out
    assert "pf prec" in out and "host-link" in out
    header = next(line for line in out.splitlines() if "policy" in line and "┃" in line)
    titles = [c.strip() for c in header.strip("┃ ").split("┃")]
    lines = [line for line in out.splitlines() if line.count("│") >= 10]
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in lines]
    assert [r[0] for r in rows] == [r["policy"] for r in report["rows"]]
    prec_col, mb_col = titles.index("pf prec"), titles.index("host-link MB")  # one line each
    precisions = set()
    for cells, r in zip(rows, report["rows"], strict=True):
        want = r.get("prefetch_precision")  # ideal: no manager, no precision
        assert cells[prec_col] == ("-" if want is None else f"{want:.3f}"), r["policy"]
        assert cells[mb_col] == f"{r['transfer_bytes'] / 1e6:,.0f}", r["policy"]
        precisions.add(cells[prec_col])
    # pbkv prefetches (a precision) and tier-less lru moves nothing over the link.
    assert next(c for c, r in zip(rows, report["rows"], strict=True) if r["policy"] == "pbkv")[
        prec_col
    ] not in ("-", "0.000")
    assert rows[0][mb_col] == "0" and report["rows"][0]["policy"] == "lru"
