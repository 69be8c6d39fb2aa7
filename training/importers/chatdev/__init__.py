"""Importer for ChatDev run logs (``WareHouse/*/*.log``), both log formats.

A log is a sequence of records, each opening with ``[<time> <LEVEL>] `` at a line start::

    2023 format                                 later format
    PhaseType: PhaseType.CODING                 System: **[RolePlaying]**  (a table of roles)
    AI Assistant (Programmer) sys message: ...  Chief Technology Officer: **[Start Chat]** ...
    AI User (Chief Technology Officer): ...     **[OpenAI_Usage_Info Receive]** prompt_tokens..
    [OpenAI_Usage_Info] prompt_tokens: ...      Programmer: **Programmer<->Chief Technology
    [0] AI Assistant (Programmer): <reply>          Officer on : Coding, turn 0** <reply>

Every phase is a fresh two-agent chat (ChatDev's RolePlaying): both agents keep only that
chat's messages. A call's prompt is rebuilt from the log text, as ChatDev sends it: the role's
system message (background, role text, the customer's task), then the phase chat so far (the
opening prompt, memory notes, the replies); it becomes content-addressed segments
(``content.text_segments``), so identical text gives identical segments: one role's calls
share the task, a review re-run on unchanged code repeats its prompt. The LLM calls'
usage records come just before the replies they produced, in order, so replies take them
first-in first-out within a chat; a usage record left over when the chat ends is counted as
skipped ("usage: LLM call with no logged reply"). Logs that are not ChatDev runs (empty, crashed
before any reply, experience-graph and MCTS logs from other tools in the same folder) are
skipped whole and counted by reason, and so are second copies of a run (the folder holds
some runs under two or three names; a run is identified by a hash of all its replies).

    log_format.py   records, timestamps, the task; which files are ChatDev run logs
    run_parser.py   one run's records -> steps (phase chats, usage pairing, prompt segments)
    __init__.py     the importer: files -> workflows, second copies, ``prompt_texts``
"""

from __future__ import annotations

from pathlib import Path

from pbkv.trace import Workflow
from pbkv.training.importers.base import (
    ImportOptions,
    ImportResult,
    ProgressFn,
    no_progress,
    run_id,
    source_files,
)
from pbkv.training.importers.chatdev.log_format import (
    file_kind,
    looks_like_chatdev,
    records,
    task_of,
)
from pbkv.training.importers.chatdev.run_parser import RunParser

APP = "chatdev"


def import_chatdev(
    src: Path, options: ImportOptions, progress: ProgressFn = no_progress
) -> ImportResult:
    result = ImportResult()
    seen: dict[str, str] = {}  # fingerprint of a run's replies -> the file it was kept from
    for path in progress(source_files(src, "*.log")):
        result.files_read += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        wf = _workflow(path, text, options, result, seen)
        if wf is not None:
            result.workflows.append(wf)
    return result


def _workflow(
    path: Path, text: str, options: ImportOptions, result: ImportResult, seen: dict[str, str]
) -> Workflow | None:
    reason = file_kind(text)
    if reason is not None:
        result.skipped[reason] += 1
        return None
    task = task_of(text)
    local = ImportResult()  # merged only if this file is kept (or holds no run at all)
    state = RunParser(path.stem, task, options, local)
    for ts, body in records(text):
        state.record(ts, body)
    state.close_chat()
    if not state.steps:
        _merge(result, local)
        result.skipped["file: ChatDev log without any agent reply (run stopped early)"] += 1
        return None
    fingerprint = state.digest.hexdigest()
    if fingerprint in seen:
        # The folder holds some runs twice (the same log committed under two names, differing
        # only in blank or debug lines): the replies are identical, so the run is kept once.
        result.skipped["file: second copy of a run already imported (identical replies)"] += 1
        return None
    seen[fingerprint] = path.name
    _merge(result, local)
    return Workflow(
        workflow_id=run_id(APP, path),
        app=APP,
        task=task,
        steps=tuple(state.steps),
        meta={
            "source": path.name,
            "log_format": "2023" if state.old_format else "later",
            "usage_matched": state.usage_matched,
            "system_messages": [options.text(t) or "" for t in state.system_texts],
        },
    )


def _merge(into: ImportResult, part: ImportResult) -> None:
    into.records_read += part.records_read
    into.skipped.update(part.skipped)


def prompt_texts(workflow: Workflow) -> list[str]:
    """The text of each step's prompt, rebuilt from a ChatDev trace's texts (which must be
    kept whole): the role's system message, then the phase chat so far (the opening prompt,
    memory notes, every reply), parts joined by line breaks."""
    systems = workflow.meta.get("system_messages", [])
    chats: dict[int, list[str]] = {}
    out = []
    for step in workflow.steps:
        messages = chats.setdefault(step.meta["chat"], [])
        messages.extend(step.meta.get("context", []))
        out.append("\n".join([systems[step.meta["system"]], *messages]))
        messages.append(step.output_text or "")
    return out


__all__ = ["APP", "import_chatdev", "looks_like_chatdev", "prompt_texts"]
