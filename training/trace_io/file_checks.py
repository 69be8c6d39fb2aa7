"""Checks that span the lines of one trace file, fed the parsed workflows in line order.

    duplicate workflow_id              a later line reuses an id
    app-scoped content length          ``system:X`` / ``preamble:X`` of one app must always hold
                                       the same number of tokens (they name one fixed text)

A rejected line sets no reference: its id and lengths do not count against later lines.
"""

from __future__ import annotations

from pbkv.trace import Workflow
from pbkv.training.trace_io.problems import Problem


class FileChecker:
    """Checks that span lines: duplicate ids and app-scoped content lengths."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen_ids: dict[str, int] = {}
        self.app_lengths: dict[tuple[str, str], tuple[int, int]] = {}

    def check(self, wf: Workflow, line: int) -> list[Problem]:
        problems: list[Problem] = []
        first = self.seen_ids.get(wf.workflow_id)
        if first is not None:
            problems.append(
                Problem(
                    self.path,
                    line,
                    "workflow_id",
                    f"duplicate workflow id {wf.workflow_id!r} (first on line {first})",
                )
            )
        pending: dict[tuple[str, str], tuple[int, int]] = {}
        for i, step in enumerate(wf.steps):
            for j, seg in enumerate(step.prompt):
                if seg.kind not in ("system", "preamble"):
                    continue
                key = (wf.app, seg.id)
                known = self.app_lengths.get(key) or pending.get(key)
                if known is None:
                    pending[key] = (seg.tokens, line)
                elif known[0] != seg.tokens:
                    problems.append(
                        Problem(
                            self.path,
                            line,
                            f"steps[{i}].prompt[{j}].tokens",
                            f"app {wf.app!r} content {seg.id!r} has {seg.tokens} tokens here but "
                            f"{known[0]} on line {known[1]}; app-scoped content is one fixed text",
                        )
                    )
        if not problems:  # a rejected line does not set the reference for later lines
            self.seen_ids[wf.workflow_id] = line
            self.app_lengths.update(pending)
        return problems
