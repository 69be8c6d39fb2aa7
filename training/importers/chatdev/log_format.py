"""The record layer of a ChatDev log: records, their timestamps, the run's task, and telling
a ChatDev run log from the other tools' logs kept in the same folder.

A record opens with ``[<time> <LEVEL>] `` at a line start and runs to the next one; text before
the first record is ignored and ANSI colour codes are dropped. ``file_kind`` names why a text is
not a ChatDev run log (``None``: it is one); nothing here knows about chats or steps.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

_RECORD = re.compile(
    r"^\[(?P<ts>[0-9][0-9:, -]*?) (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ", re.M
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# the earliest (AgentTech) logs print the task only inside the request's system message
_TASK_IN_REQUEST = re.compile(r"Here is a new customer\\*'s task: (?P<task>.+?)\.*(?:\\+n|\n)")
_TASK = re.compile(
    r"(?:\*\*task_prompt\*\*: (?P<a>[^\n]*)|task=(?P<q>['\"])(?P<b>.*?)(?P=q)"
    r"[,)])"
)


def looks_like_chatdev(path: Path) -> bool:
    """Whether the file at ``path`` starts like a ChatDev run log (for format detection)."""
    if path.suffix != ".log":
        return False
    with path.open(encoding="utf-8", errors="replace") as fh:
        head = fh.read(65536)
    return (
        _RECORD.search(head) is not None
        and file_kind(head) is None
        and any(
            marker in head
            for marker in ("**[RolePlaying]**", "PhaseType: ", "AI User (", "**[Start Chat]**")
        )
    )


def records(text: str) -> list[tuple[str, str]]:
    """(timestamp, body) for every record; text before the first record is ignored."""
    starts = list(_RECORD.finditer(text))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        out.append((m.group("ts"), _ANSI.sub("", text[m.end() : end]).strip()))
    return out


def seconds(ts: str) -> float | None:
    # ChatDev writes year-day-month ("2023-25-08 07:23:41"); some tools log ISO dates.
    for fmt in ("%Y-%d-%m %H:%M:%S", "%Y-%m-%d %H:%M:%S,%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(ts, fmt).timestamp()
        except ValueError:
            continue
    return None


def file_kind(text: str) -> str | None:
    """Why a file is not a ChatDev run log, or None if it is one."""
    if not text.strip():
        return "file: empty log"
    if (
        "[Reasoning Path" in text
        or "[Graph Reasoning" in text
        or "[Init Policy Forward]" in text
        or "[Model Query]" in text
    ):
        return "file: not a ChatDev run (graph-reasoning / MCTS tool log)"
    if "[Config]:{'experience'" in text:
        return "file: not a ChatDev run (experience co-learning graph log)"
    if "appmap enabled" in text and len(text) < 200:
        return "file: not a ChatDev run (appmap start-up line only)"
    return None


def task_of(text: str) -> str:
    """The customer's task the log states ("" if it states none)."""
    task_match = _TASK.search(text)
    task = (task_match.group("a") or task_match.group("b") or "").strip() if task_match else ""
    if not task and (m := _TASK_IN_REQUEST.search(text)) is not None:
        task = m.group("task").strip()
    return task


def split_bracket(text: str) -> tuple[str | None, str]:
    """(the ``[<system message>]`` block the later logs print before a message, the message)."""
    if text.startswith("["):
        end = text.find("]\n\n")
        if end > 0:
            return text[1:end], text[end + 3 :].strip()
    return None, text.strip()


def camel(name: str) -> str:
    """``DEMAND_ANALYSIS`` -> ``DemandAnalysis``."""
    return "".join(part.capitalize() for part in name.split("_") if part)
