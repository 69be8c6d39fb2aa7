"""``pbkv bench calibration`` end to end on the bundled logs (one seed, short stream)."""

from __future__ import annotations

import json

import pytest
from cli_run import pbkv


@pytest.mark.slow
def test_the_fused_model_leads_on_the_shifted_set_and_recalibration_lowers_its_ece(tmp_path):
    done = pbkv(
        "bench",
        "calibration",
        "--seeds",
        "1",
        "--checkpoints",
        "0,200",
        "--json",
        "--out",
        tmp_path,
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "calibration.json").read_text())
    median = report["median"]
    assert sorted(median) == sorted(
        ["fused", "frequency", "markov1", "markov", "recency", "static-graph"]
    )
    assert [row["observed"] for row in median["fused"]] == [0, 200]
    start, later = median["fused"]
    # the shift the issue describes: the fused model ahead of every baseline, overconfident
    assert all(start["top1"] > rows[0]["top1"] for n, rows in median.items() if n != "fused")
    assert start["ece_raw"] > 0.10
    # before any outcome the recalibration changes nothing; after 200 rounds either map has
    # halved the ECE, the held-out log-loss is lower, and top-1 is the raw forecast's
    for m in ("platt", "histogram"):
        assert (
            start[f"ece_{m}"] == start["ece_raw"]
            and start[f"log_loss_{m}"] == start["log_loss_raw"]
        )
        assert later[f"ece_{m}"] < later["ece_raw"] / 2
        assert later[f"log_loss_{m}"] < later["log_loss_raw"]
    # every shifted workflow is held out once (1420 rounds); the sampling floor of that many
    # is below the measured ECE, and the workflow bootstrap gives an interval
    [run] = report["runs"]
    assert len(run["stream_rounds"]) == report["folds"] == 4
    assert run["held_out_rounds"] == 1420
    assert 0.0 < later["floor_platt"] < later["ece_platt"]
    assert later["ece_platt_lo"] < later["ece_platt_hi"]


def test_bad_arguments_are_one_line_errors():
    done = pbkv("bench", "calibration", "--train", "x.jsonl")
    assert (done.returncode, done.stderr) == (
        2,
        "pbkv: error: --train and --shifted go together (or neither: --shift)\n",
    )
    done = pbkv("bench", "calibration", "--folds", "1")
    assert (done.returncode, done.stderr) == (2, "pbkv: error: --folds must be in 2..100, got 1\n")
    done = pbkv("bench", "calibration", "--checkpoints", "a,b")
    assert done.returncode == 2
    assert (
        done.stderr == "pbkv: error: --checkpoints: expected a comma list of integers, got 'a,b'\n"
    )


def test_cost_times_each_map_per_judged_event_in_alternating_rounds():
    done = pbkv(
        "bench", "calibration", "--cost", "--cost-events", "300", "--cost-rounds", "3", "--json"
    )
    assert done.returncode == 0, done.stderr
    cost = json.loads(done.stdout)
    assert (cost["events"], cost["rounds"]) == (300, 3)
    assert list(cost["us_per_event"]) == ["platt", "histogram"]
    for key in ("us_per_event", "wall_us_per_event"):  # CPU time of the thread, wall time
        assert list(cost[key]) == ["platt", "histogram"]
        assert all(us > 0.0 for us in cost[key].values())
    assert cost["ratio_to_first"]["platt"] == 1.0
    assert cost["ratio_to_first"]["histogram"] == pytest.approx(
        cost["us_per_event"]["histogram"] / cost["us_per_event"]["platt"]
    )
    assert len(cost["load_average_before_after"]) == 2
