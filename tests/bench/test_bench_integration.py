"""``pbkv bench integration`` runs end to end against the ``pbkv serve`` it starts; its
figures come from real calls (the reporting candidate's events all reach pbkv)."""

from __future__ import annotations

import json

import pytest
from cli_run import pbkv


def test_bench_integration_times_three_candidates_and_reports_every_event(tmp_path):
    out = tmp_path / "bench"
    run = pbkv(
        "bench", "integration", "--calls", "40", "--paced-calls", "20", "--rounds", "2",
        "--pace-ms", "1", "--out", out,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "integration.json").read_text())
    for mode, calls in (("back_to_back", 40), ("paced", 20)):
        r = result[mode]
        assert r["calls_per_candidate"] == calls
        assert all(r[name]["median_us"] > 0 for name in ("none", "tags", "tags+reporting"))
        # Only the reporting candidate enqueues: StepStarted + StepFinished per call, plus the
        # bench workflow's start and end; all of them sent.
        assert r["reporter"] == {
            "flushed": True,
            "sent": 2 * calls + 2,
            "failed": 0,
            "dropped_full": 0,
            "dropped_down": 0,
        }
    assert "tags+reporting" in run.stdout and "load average" in run.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rounds", "0"], "--rounds must be in"),
        (["--calls", "5", "--rounds", "10"], "--rounds must be in"),
        (["--pace-ms", "0"], "--pace-ms"),
    ],
)
def test_bench_integration_checks_arguments_before_work(argv, message, tmp_path):
    run = pbkv("bench", "integration", *argv, "--out", tmp_path / "bench")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "bench").exists()
