"""``pbkv bench cluster``: one-line errors, and a tiny real run's JSON (redis-server on 7422)."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_run import pbkv
from support import need, port_open


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--replicas", "0,2"], "--replicas must be integers in [1, 8], got '0,2'"),
        (["--replicas", "a"], "--replicas must be comma-separated integers, got 'a'"),
        (["--project", "2000"], "--project must be integers in [1, 1024], got '2000'"),
        (["--workflows", "0"], "--workflows, --procs, --steps and --duration-s must be > 0"),
        (
            ["--wait-replicas", "2"],
            "--wait-replicas must be 0 or 1 (one Redis replica here), got '2'",
        ),
        (
            ["--redis-port", "70000"],
            "--redis-port must be in [1, 65535] and --redis-benchmark-n > 0",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, error, tmp_path) -> None:
    done = pbkv("bench", "cluster", *argv, "--out", tmp_path / "out")
    assert (done.returncode, done.stderr) == (2, f"pbkv: error: {error}\n")


def tiny_run(tmp_path, ports: tuple[int, ...], *argv: str):
    """A tiny ``pbkv bench cluster`` run on our redis-server at ``ports[0]`` (a Redis replica,
    if any, on the next): (its output, its report)."""
    need(shutil.which("redis-server") and shutil.which("redis-benchmark"), "redis-server")
    need(not any(port_open("127.0.0.1", p) for p in ports), f"free ports {ports}")
    done = pbkv(
        "bench", "cluster", *argv, "--workflows", "10", "--duration-s", "1",
        "--warmup-s", "0.5", "--redis-port", str(ports[0]), "--redis-benchmark-n", "2000",
        "--out", tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads((tmp_path / "cluster.json").read_text())


@pytest.mark.slow
def test_a_tiny_run_writes_every_figure(tmp_path) -> None:
    out, report = tiny_run(tmp_path, (7422,), "--replicas", "1,2", "--project", "8")
    assert [r["replicas"] for r in report["runs"]] == [1, 2]
    for r in report["runs"]:
        assert r["events"] > 0 and r["errors"] == 0
        assert len(r["replica_cpu_s_per_1k_events"]) == r["replicas"]
        assert r["redis_ops_per_event"] > 1  # at least the append script and its XADD
        assert r["step_finished_p50_ms"] <= r["step_finished_p99_ms"]
    assert set(report["redis_capacity_rps"]) == {"set", "get", "xadd"}
    (proj,) = report["projection"]
    assert proj["replicas"] == 8
    assert proj["saturates_first"] in ("replica_cpu", "redis_cpu", "redis_ops")
    assert "saturates first" in out


@pytest.mark.slow
def test_a_tiny_run_with_wait_replicas_off_and_on(tmp_path) -> None:
    """--wait-replicas 0,1: the same load without and with WAIT for a Redis replica of our
    redis-server (on 7433), every event acknowledged in both."""
    _, report = tiny_run(tmp_path, (7432, 7433), "--replicas", "1", "--wait-replicas", "0,1")
    assert [(r["replicas"], r["wait_replicas"]) for r in report["runs"]] == [(1, 0), (1, 1)]
    for r in report["runs"]:
        assert r["events"] > 0 and r["errors"] == 0, r.get("first_error")
