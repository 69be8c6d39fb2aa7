"""``pbkv demo`` end to end on a small synthetic workload: it trains, serves, replays over gRPC
and reports; the service in the loop decides exactly what the in-process manager decides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pbkv.training.synth import synthesize
from pbkv.training.trace_io import write_workflows

PBKV = str(Path(sys.executable).with_name("pbkv"))


@pytest.mark.slow
def test_demo_service_in_the_loop_matches_the_in_process_manager(tmp_path: Path) -> None:
    traces = tmp_path / "dyn.jsonl.gz"
    write_workflows(traces, synthesize("dynamic", 3, 40))
    out = tmp_path / "out"
    run = subprocess.run(
        [
            PBKV,
            "demo",
            "--traces",
            str(traces),
            "--out",
            str(out),
            "--replay-per-app",
            "4",
            "--baselines",
            "lru,pbkv",
            "--http-port",
            "0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dashboard: http://127.0.0.1:" in run.stdout
    report = json.loads((out / "demo.json").read_text())
    rows = {(r["policy"], r["via"]): r for r in report["rows"]}
    service, local = rows[("pbkv", "gRPC service")], rows[("pbkv", "in-process")]
    for key in (
        "workflows",
        "mean_latency_s",
        "gpu_hit_rate",
        "cpu_hit_rate",
        "recomputed_tokens",
        "h2d_bytes",
        "d2h_bytes",
        "gpu_evictions",
    ):
        assert service[key] == local[key], key
    assert service["workflows"] == sum(n for _, n in report["samples"].values())
    svc = report["service_stats"]["service"]
    assert svc["engine_event_errors"] == 0 and service["link_events_dropped"] == 0
    assert svc["events_recorded"] > 0 and svc["active_workflows"] == 0
    assert (out / "model" / "metadata.json").is_file()


def test_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    run = subprocess.run(
        [PBKV, "demo", "--baselines", "kvflow", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "--baselines must include lru" in run.stderr
    run = subprocess.run(
        [PBKV, "demo", "--traces", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "--traces" in run.stderr
