"""Checks shared by the importer tests (importable as ``import_checks`` from tests/training)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pbkv.training.trace_io import validate_file, write_workflows


def agent_counts(result) -> Counter[str]:
    """Steps per agent over every imported workflow."""
    return Counter(s.agent for w in result.workflows for s in w.steps)


def record_skips(result) -> int:
    """Records skipped one by one (not whole files, not usage records)."""
    return sum(n for reason, n in result.skipped.items() if reason.startswith("record:"))


def assert_valid_trace(tmp_path: Path, result) -> None:
    """The imported workflows written as a trace file pass ``validate_file``."""
    path = tmp_path / "out.jsonl.gz"
    write_workflows(path, result.workflows)
    assert validate_file(path) == []
