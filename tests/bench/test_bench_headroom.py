"""``pbkv bench headroom`` on a small grid: the JSON's shape, the medians over seeds, the
strict bound under every policy, and the heat maps written."""

from __future__ import annotations

import argparse
import json
import statistics

import pytest

from pbkv.bench import headroom, headroom_plot
from pbkv.cli import CliError


def main(argv: list[str]) -> int:
    """``pbkv bench headroom ARGV`` without importing every other component's CLI."""
    parser = argparse.ArgumentParser()
    headroom.add_arguments(parser)
    return headroom.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("headroom")
    rc = main(
        [
            "--num-workflows",
            "8",
            "--synth",
            "output_tokens=10,30",
            "--synth",
            "system_tokens=200,800",
            "--seeds",
            "0,1",
            "--gpu",
            "0.5x",
            "--host",
            "none,1x",
            "--link-gbps",
            "25",
            "--concurrency",
            "2",
            "--pauses",
            "0,1-5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return json.loads((out / "headroom.json").read_text()), out


def test_json_shape(report) -> None:
    data, _ = report
    assert data["axes"] == {
        "gpu": ["0.5x"],
        "host": ["none", "1x"],
        "link_gbps": ["25"],
        "concurrency": ["2"],
        "pauses": ["0", "1-5s"],
    }
    assert data["seeds"] == [0, 1]
    assert data["policies"] == [
        "lru-offload",
        "hicache",
        "vllm-offload",
        "continuum",
        "pbkv",
        "ideal",
    ]
    assert len(data["rows"]) == 4 * 2  # points x seeds
    assert [(p["host"], p["pauses"]) for p in data["points"]] == [
        ("none", "0"),
        ("none", "1-5s"),
        ("1x", "0"),
        ("1x", "1-5s"),
    ]
    for row in data["rows"]:
        assert row["cpu_blocks"] == (0 if row["host"] == "none" else row["gpu_blocks"])
        assert row["replayed_workflows"] == 4  # 8 workflows, the first half trains
        best = row[f"{row['best_nonpred']}_mean_latency_s"]
        assert row["pbkv_vs_best_nonpred"] == best / row["pbkv_mean_latency_s"]
        assert row["headroom"] == best / row["bound_mean_latency_s"] >= 1.0
        assert row["bound_holds"] is True
        for p in data["policies"]:  # below every policy (ideal ignores capacity)
            if p != "ideal" or not row["bound_capacity_binds"]:
                assert row[f"{p}_mean_latency_s"] >= row["bound_mean_latency_s"]
        # Where each policy's time went: recomputed tokens no fewer than the bound's, bytes
        # over the host link (none without a host tier or for the perfect cache).
        diag = row["diagnostics"]
        assert set(diag) == set(data["policies"])
        for p, d in diag.items():
            assert d["recomputed_tokens"] >= row["bound_recomputed_tokens"]
            assert d["transfer_bytes"] == d["h2d_bytes"] + d["d2h_bytes"]
            if row["host"] == "none" or p == "ideal":
                assert d["transfer_bytes"] == 0


def test_points_are_medians_over_seeds(report) -> None:
    data, _ = report
    for point in data["points"]:
        rows = [
            r for r in data["rows"] if (r["host"], r["pauses"]) == (point["host"], point["pauses"])
        ]
        assert len(rows) == point["seeds"] == 2
        per_seed = [r["pbkv_vs_best_nonpred"] for r in rows]
        assert point["pbkv_vs_best_nonpred_per_seed"] == per_seed
        assert point["pbkv_vs_best_nonpred"] == statistics.median(per_seed)
        assert point["headroom"] == statistics.median(r["headroom"] for r in rows)
        assert sum(point["best_nonpred_counts"].values()) == 2


def test_pauses_lengthen_workflows(report) -> None:
    data, _ = report
    by = {(p["host"], p["pauses"]): p for p in data["points"]}
    for host in ("none", "1x"):
        # Pauses of 1-5 s before each later round: every workflow takes seconds longer.
        assert (
            by[(host, "1-5s")]["bound_mean_latency_s"] > by[(host, "0")]["bound_mean_latency_s"] + 1
        )
        assert (
            by[(host, "1-5s")]["pbkv_mean_latency_s"] > by[(host, "0")]["pbkv_mean_latency_s"] + 1
        )


def test_heat_maps_are_written(report) -> None:
    _, out = report
    for name in ("headroom_pbkv.png", "headroom_bound.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu", "0"], "--gpu: '0' is not FRACTIONx"),
        (["--host", "3"], "--host: '3' is not none or FRACTIONx"),
        (["--pauses", "5-1"], "--pauses: '5-1' is not 0 or LOW-HIGH"),
        (["--concurrency", "x"], "--concurrency: 'x' is not a number"),
        (["--seeds", "-1"], "--seeds: '-1' is not an integer"),
        (["--policies", "lru,kvflow"], "--policies needs pbkv"),
        (["--gpu", "full", "--preset", "vllm-cpu"], "has no full-size capacity"),
    ],
)
def test_bad_arguments_are_named(tmp_path, argv, message) -> None:
    with pytest.raises(CliError, match=message.replace("(", r"\(")):
        main(["--num-workflows", "4", "--out", str(tmp_path), *argv])


@pytest.mark.parametrize("ref", ["kvflow", "cachesage"])
def test_summary_carries_pbkv_over_reference_per_seed(ref: str) -> None:
    """With a predictive reference replayed, a point has the median pbkv / reference and the
    per-seed list (issue 12: on static workflows pbkv >= kvflow everywhere, on dynamic ones
    pbkv >= cachesage); without it, neither."""
    key = {"gpu": "0.5x", "host": "1x", "link_gbps": "25", "concurrency": "4", "pauses": "0"}
    name = f"pbkv_vs_{ref}"

    def row(seed: int, vs: float | None) -> dict:
        r = key | {
            "seed": seed,
            "gpu_blocks": 100,
            "replayed_workflows": 12,
            "best_nonpred": "continuum",
            "pbkv_vs_best_nonpred": 1.0,
            "headroom": 1.2,
            "pbkv_share_recovered": 0.0,
            "bound_mean_latency_s": 1.0,
            "bound_holds": True,
            "pbkv_mean_latency_s": 2.0,
        }
        return r if vs is None else r | {name: vs}

    (point,) = headroom.summarize([row(0, 0.99), row(1, 1.02), row(2, 1.01)], list(key))
    assert point[name] == 1.01
    assert point[f"{name}_per_seed"] == [0.99, 1.02, 1.01]
    assert point["best_nonpred_counts"] == {"continuum": 3}
    (point,) = headroom.summarize([row(0, None)], list(key))
    assert point[name] is None and f"{name}_per_seed" not in point
    assert "continuum" in headroom.NONPRED  # best-nonpred is chosen among all four


def test_concurrency_at_or_above_the_replayed_workflows_is_named(report) -> None:
    """A concurrency of at least the replayed workflows never queues, so the grid's larger
    values replay the same thing: those points are named (the full grid's 64 with the default
    24 workflows is 12)."""
    data, _ = report
    assert headroom_plot.saturated(data["points"]) == []  # concurrency 2, 4 replayed
    points = [
        {"concurrency": c, "replayed_workflows": [12, 11]} for c in ("1", "4", "16", "64", "11")
    ]
    assert headroom_plot.saturated(points) == [
        ("11", 11),
        ("16", 11),
        ("16", 12),
        ("64", 11),
        ("64", 12),
    ]
