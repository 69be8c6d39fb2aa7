"""``pbkv bench policies --workload FILE`` replays the whole file and says how much."""

from __future__ import annotations

import json

from cli_run import pbkv

from pbkv.training.synth import synthesize
from pbkv.training.trace_io import write_workflows


def test_a_file_workload_is_used_whole_and_counted(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_workflows(trace, synthesize("static", seed=1, num_workflows=70))  # > the old cap 60
    out = tmp_path / "out"
    done = pbkv(
        "bench",
        "policies",
        "--workload",
        trace,
        "--policies",
        "lru",
        "--predictor",
        "frequency",
        "--gpu-blocks",
        "2000",
        "--concurrency",
        "4",
        "--no-plot",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"workload {trace}: 70 workflows, 35 to train on, 35 replayed per policy and setting"
    )
    report = json.loads((out / "policies.json").read_text())
    assert (report["num_workflows_train"], report["num_workflows_replayed"]) == (35, 35)
    done = pbkv(
        "bench",
        "policies",
        "--workload",
        trace,
        "--num-workflows",
        "20",
        "--policies",
        "lru",
        "--predictor",
        "frequency",
        "--gpu-blocks",
        "2000",
        "--concurrency",
        "4",
        "--no-plot",
        "--out",
        out,
    )
    assert done.stdout.splitlines()[0] == (
        f"workload {trace}: 20 workflows, 10 to train on, 10 replayed per policy and setting"
    )
