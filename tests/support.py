"""What tests share besides fixtures (importable as ``support``: a plain module name, unlike
``conftest``, which several folders define)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pbkv.predictor.forecast import AgentForecast, Forecast, Predictor, WorkflowState

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# ``pbkv serve`` in a subprocess: the installed console script, its start-up lines.
PBKV = str(Path(sys.executable).with_name("pbkv"))  # the installed console script


def start_lines(proc: subprocess.Popen) -> list[str]:
    """What ``pbkv serve`` printed up to and including its ``READY <port>`` line."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY"):
            return lines
    raise RuntimeError(f"pbkv serve ended before READY: {''.join(lines)}")


def ready_port(lines: list[str]) -> int:
    return int(lines[-1].split()[1])


def need(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a real dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is missing", pytrace=False)
    pytest.skip(f"{what} not available")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# A stats snapshot (``dashboard.schema.StatsDict``) in which every metric family of
# ``dashboard.metrics`` has samples: the metrics test reads it exactly, the deploy test reads
# which metric names and labels exist.
STATS = {
    "policy": "pbkv",
    "hits": {"gpu_hits": 6, "gpu_lookups": 8, "cpu_hits": 1, "cpu_lookups": 2},
    "hits_by_engine": {"sim-0": {"gpu_hits": 6, "gpu_lookups": 8}},
    "hits_by_app": {"chatdev": {"gpu_hits": 6, "gpu_lookups": 8}},
    "hits_by_agent": {'Code "Reviewer"': {"gpu_hits": 2, "gpu_lookups": 5}, "idle": {}},
    "reused_tokens": 96,
    "recomputed_tokens": 32,
    "prefetched_blocks": 4,
    "prefetch_used_blocks": 3,
    "prefetch_wasted_blocks": 1,
    "prefetch_precision": 0.75,
    "prefetch_recall": None,
    "predictor_top1_accuracy": 0.625,
    "predictor_brier": 0.125,
    "predictor_ece": 0.0625,
    "predictor_samples": 8,
    "predictor_errors": 2,
    "gpu_blocks_cached": 10,
    "cpu_blocks_cached": 20,
    "directory_blocks": 25,
    "plans_built": 7,
    "plan_age_s_by_engine": {"sim-0": 1.5, "sim-1": 42.0},
    "fallback_lru": True,
    "active_workflows": 3,
    "baseline_lru": {
        "hits": {"gpu_hits": 2, "gpu_lookups": 8},
        "reused_tokens": 32,
        "recomputed_tokens": 96,
    },
}


class ScriptedPredictor(Predictor):
    """Forecasts set by the test: ``script[(workflow_id, step_index)] = (agents, confidence)``
    with ``agents = {agent: (p_within..., eta_steps)}``; unscripted states get an empty,
    zero-confidence forecast."""

    name = "scripted"

    def __init__(self, horizon: int = 2) -> None:
        self.horizon = horizon
        self.script: dict[tuple[str, int], tuple[dict[str, tuple], float]] = {}
        self.calls = 0

    def next_distribution(self, state: WorkflowState) -> dict[str, float]:
        agents, _ = self.script.get((state.workflow_id, state.step_index), ({}, 0.0))
        return {a: v[0] for a, v in agents.items()}

    def forecast(self, state: WorkflowState, horizon: int = 2) -> Forecast:
        self.calls += 1
        agents, conf = self.script.get((state.workflow_id, state.step_index), ({}, 0.0))
        return Forecast(
            state.workflow_id,
            state.step_index,
            self.horizon,
            tuple(AgentForecast(a, tuple(v[:-1]), v[-1]) for a, v in agents.items()),
            conf,
        )
