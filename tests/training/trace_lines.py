"""Trace lines for the trace_io tests (importable as ``trace_lines`` from tests/training):
a valid line to mutate, a file of lines, and the problems a file has."""

from __future__ import annotations

import json
from pathlib import Path

from pbkv.training.trace_io import validate_file


def wf_dict(workflow_id: str = "w1", **overrides) -> dict:
    """A valid trace line: two agents, a growing history, times in order."""
    d = {
        "format": "pbkv.trace.v1",
        "workflow_id": workflow_id,
        "app": "demo",
        "tenant": "t",
        "task": "write a game",
        "steps": [
            {
                "agent": "planner",
                "prompt": [
                    {"id": "system:planner", "tokens": 100},
                    {"id": "history:chat", "tokens": 10},
                    {"id": "new", "tokens": 5},
                ],
                "output_tokens": 20,
                "start_s": 0.0,
                "end_s": 1.5,
                "phase": "plan",
            },
            {
                "agent": "coder",
                "prompt": [
                    {"id": "system:coder", "tokens": 200},
                    {"id": "history:chat", "tokens": 30},
                ],
                "output_tokens": 40,
                "start_s": 2.0,
                "parallel_group": "g1",
                "meta": {"note": "x"},
            },
        ],
    }
    d.update(overrides)
    return d


def write_lines(path: Path, lines: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def problems_of(tmp_path: Path, *lines) -> list[tuple[int | None, str, str]]:
    path = write_lines(tmp_path / "t.jsonl", list(lines))
    return [(p.line, p.field, p.message) for p in validate_file(path)]
