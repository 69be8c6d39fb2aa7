"""What a trace load reports: ``Problem`` (one thing wrong, located by file, line and JSON
path), ``TraceError`` (a strict load's failure, listing every problem) and ``LoadResult`` (the
valid workflows, every problem, and the skipped lines counted by reason).

A skipped line counts once per distinct reason among its problems (``skip_reason`` maps a
problem's message to a short category for the summary).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pbkv.errors import UserError
from pbkv.trace import Workflow
from pbkv.training.importers.base import plural


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a trace file. ``line`` is 1-based; ``None`` for the whole file."""

    path: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        field_part = f"{self.field}: " if self.field else ""
        return f"{where}: {field_part}{self.message}"


class TraceError(ValueError, UserError):
    """A trace file could not be loaded; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        assert problems
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")

    @property
    def path(self) -> str:
        return self.problems[0].path

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def field(self) -> str:
        return self.problems[0].field


@dataclass(slots=True)
class LoadResult:
    """What a load found: the valid workflows, every problem, and skipped lines by reason."""

    workflows: list[Workflow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped_lines: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        loaded = plural(len(self.workflows), "workflow")
        if not self.skipped_lines:
            return f"{loaded} loaded, 0 lines skipped"
        reasons = ", ".join(f"{n} x {r}" for r, n in self.skip_reasons.most_common())
        return f"{loaded} loaded, {plural(self.skipped_lines, 'line')} skipped ({reasons})"


def skip_reason(problem: Problem) -> str:
    """A short category for the skip summary."""
    msg = problem.message
    for key in (
        "unknown field",
        "missing required field",
        "duplicate workflow id",
        "steps out of order",
        "shrinks",
        "not an agent of this workflow",
        "app-scoped content",
        "must be an integer",
        "must be a string",
        "must be >= 0",
        "truncated JSON",
        "invalid JSON",
        "not UTF-8",
        "longer than",
    ):
        if key in msg:
            return key
    return msg.split(":")[0][:60]
