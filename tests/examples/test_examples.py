"""The examples run as documented."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread

REPO = Path(__file__).resolve().parents[2]


def test_chatdev_log_replays_as_live_calls(datasets_dir: Path) -> None:
    log = sorted((datasets_dir / "chatdev_openbmb").glob("*.log"))[0]
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "chatdev_live.py"),
            "--serve",
            "--log",
            str(log),
            "--max-steps",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{log.name}: ")
    assert len([line for line in lines if "no forecast" in line]) == 5


def test_chatdev_example_runs_on_the_bundled_sample_without_datasets() -> None:
    from pbkv.training.samples import sample_paths
    from pbkv.training.trace_io import load_workflows

    first = load_workflows(sample_paths()["chatdev"])[0]
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "chatdev_live.py"), "--serve", "--max-steps", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"chatdev.jsonl.gz {first.workflow_id}: {len(first.steps)} turns")
    assert [line.split()[1] for line in lines[1:]] == [s.agent.split()[0] for s in first.steps[:3]]


def test_quickstart_talks_to_a_service_on_the_default_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 50151)) == 0:
            pytest.skip("something already listens on 127.0.0.1:50151")
    config = ServiceConfig(http_port=None, store_path=tmp_path / "t.sqlite3", watch_model_s=None)
    with ServerThread(config) as server:
        run = subprocess.run(
            [sys.executable, str(REPO / "examples" / "client_quickstart.py")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "None"  # no model loaded: no forecast
        stats = server.run(server.server.servicer.stats_dict)
    assert stats["service"]["events_recorded"] == 4
