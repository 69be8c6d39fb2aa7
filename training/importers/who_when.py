"""Importers for the Who&When dataset (Magentic-One and CaptainAgent runs).

Both formats are one JSON file per run: ``question`` (the task), ``history`` (the messages in
order) and labels (``mistake_agent``, ``mistake_step``...). Neither log has token counts or
times, so tokens come from ``pbkv.training.tokens.approx_tokens`` and ``start_s`` is unknown.
How each framework builds its prompts, and so how segments are chosen, is in
``docs/importers.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.importers.base import (
    History,
    ImportOptions,
    ImportResult,
    ProgressFn,
    build_step,
    no_progress,
    prompt_of,
    run_id,
    source_files,
    text_tokens,
)
from pbkv.training.importers.content import placeholder_text, text_segments

MAGENTIC_APP = "magentic-one"
CAPTAIN_APP = "captain-agent"

# Magentic-One's system prompts are not in the logs. Estimated token counts of the prompts the
# agents are built with (agent description + tool schemas), fixed for the app so that every
# run shares them, as real runs do. ComputerTerminal runs code and makes no LLM call.
MAGENTIC_SYSTEM_TOKENS = {
    "Orchestrator": 300,
    "WebSurfer": 700,
    "FileSurfer": 450,
    "Assistant": 350,
}
# The Orchestrator's ledger / planning prompt template (task, team, questions), sent after
# the conversation on every ledger call; an estimate, as above. It is the same text on every
# call of a run: a workflow-scoped stream of constant length.
MAGENTIC_LEDGER_PROMPT_TOKENS = 450
MAGENTIC_LEDGER_SEGMENT = "history:ledger-prompt"
_ORCH_ROLE = re.compile(r"^Orchestrator \((?P<what>.*)\)$")
_NEXT_SPEAKER = re.compile(r"^Next speaker (?P<target>\w+)\s*$")

CAPTAIN_TERMINAL = "Computer_terminal"


def _load_run(path: Path, result: ImportResult) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        result.skipped[f"file: unreadable JSON ({type(exc).__name__})"] += 1
        return None
    if not isinstance(data, dict) or not isinstance(data.get("history"), list):
        result.skipped["file: no 'history' list"] += 1
        return None
    return data


def who_when_kind(path: Path) -> str | None:
    """``"magentic"`` or ``"captain"`` if ``path`` is a Who&When run of that kind (records
    name the speaker in ``role`` / in ``name``), else None (for format detection)."""
    if path.suffix != ".json":
        return None
    data = _load_run(path, ImportResult())
    records = [r for r in data["history"] if isinstance(r, dict)] if data else []
    if not records:
        return None
    return "captain" if any("name" in r for r in records) else "magentic"


def _labels(data: dict[str, Any], path: Path) -> dict[str, Any]:
    keep = (
        "question_ID",
        "level",
        "ground_truth",
        "mistake_agent",
        "mistake_step",
        "mistake_reason",
    )
    meta: dict[str, Any] = {"source": path.name}
    meta.update({k: data[k] for k in keep if k in data})
    for key in ("is_correct", "is_corrected"):
        if key in data:
            meta["is_correct"] = data[key]
    return meta


# ----------------------------------------------------------------------------- Magentic-One


def import_magentic(
    src: Path, options: ImportOptions, progress: ProgressFn = no_progress
) -> ImportResult:
    """Who&When Hand-Crafted: Magentic-One runs, speaker in ``role``."""
    result = ImportResult()
    for path in progress(source_files(src, "*.json")):
        result.files_read += 1
        data = _load_run(path, result)
        if data is None:
            continue
        wf = _magentic_workflow(path, data, options, result)
        if wf is not None:
            result.workflows.append(wf)
    return result


def _magentic_workflow(
    path: Path, data: dict[str, Any], options: ImportOptions, result: ImportResult
) -> Workflow | None:
    chat = History("history:chat")
    steps: list[Step] = []
    pending: list[str] = []  # human messages not yet in a step's context
    for index, record in enumerate(data["history"]):
        result.records_read += 1
        role, content = record.get("role"), record.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            result.skipped["record: role or content missing / not a string"] += 1
            continue
        if role == "human":
            # The user's request: it opens the shared conversation (and is the task text);
            # no agent speaks it, so it is context, not a step.
            result.skipped["record: human request (kept as task + shared history)"] += 1
            chat.append(text_tokens(content))
            pending.append(content)
            continue
        steps.append(_magentic_step(role, content, index, chat, options))
        if pending and options.keep_text:
            steps[-1].meta["context"] = [options.text(t) for t in pending]
        pending = []
    if not steps:
        result.skipped["file: no agent steps"] += 1
        return None
    return Workflow(
        workflow_id=run_id(MAGENTIC_APP, path),
        app=MAGENTIC_APP,
        task=data.get("question") or "",
        steps=tuple(steps),
        meta=_labels(data, path),
    )


def _magentic_step(
    role: str, content: str, index: int, chat: History, options: ImportOptions
) -> Step:
    meta: dict[str, Any] = {"record": index, "role": role}
    match = _ORCH_ROLE.match(role)
    if match is None:
        agent = role
        kind = "reply"
        broadcast = True  # agents answer to the whole team
    else:
        agent = "Orchestrator"
        what = match.group("what")
        broadcast = what.startswith("->")
        if broadcast:
            kind = "instruction"
            meta["target"] = what[2:].strip()  # the routing target: metadata only
        elif what == "thought":
            next_speaker = _NEXT_SPEAKER.match(content)
            kind = (
                "next-speaker"
                if next_speaker
                else ("plan" if content.startswith("Initial plan") else "ledger")
            )
            if next_speaker:
                meta["target"] = next_speaker.group("target")
        else:
            kind = what.replace(" ", "-")  # "termination condition"
    meta["kind"] = kind
    # Ledger and plan records are LLM calls; instructions, "Next speaker" and the termination
    # note are derived from the ledger's JSON; ComputerTerminal only runs code.
    meta["llm_call"] = kind in ("plan", "ledger", "reply") and agent != "ComputerTerminal"
    system_tokens = MAGENTIC_SYSTEM_TOKENS.get(agent, 0)
    ledger = MAGENTIC_LEDGER_PROMPT_TOKENS if kind in ("plan", "ledger") else 0
    prompt = prompt_of(
        Segment(f"system:{agent}", system_tokens),
        chat.segment(),
        Segment(MAGENTIC_LEDGER_SEGMENT, ledger),
    )
    step = build_step(agent, prompt, content, options, meta=meta)
    if broadcast:  # only what is broadcast becomes everyone's context
        chat.append(step.output_tokens)
    return step


# ----------------------------------------------------------------------------- CaptainAgent


def import_captain(
    src: Path, options: ImportOptions, progress: ProgressFn = no_progress
) -> ImportResult:
    """Who&When Algorithm-Generated: CaptainAgent runs, speaker in ``name``."""
    result = ImportResult()
    first_with: dict[str, str] = {}  # history fingerprint -> first file holding it
    for path in progress(source_files(src, "*.json")):
        result.files_read += 1
        data = _load_run(path, result)
        if data is None:
            continue
        wf = _captain_workflow(path, data, options, result)
        if wf is None:
            continue
        # The dataset holds one history under two different tasks and labels (22.json and
        # 51.json): both are kept, as the dataset lists them, and the copy is marked.
        key = hashlib.sha256(json.dumps(data["history"], sort_keys=True).encode()).hexdigest()
        if key in first_with:
            wf.meta["same_history_as"] = first_with[key]
        first_with.setdefault(key, path.name)
        result.workflows.append(wf)
    return result


def role_words(expert_name: str) -> str:
    """``DataVerification_Expert`` -> ``data verification``: what the expert is about."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", expert_name).replace("_", " ").split()
    return " ".join(w.lower() for w in words if w.lower() not in ("expert", "experts"))


def _captain_workflow(
    path: Path, data: dict[str, Any], options: ImportOptions, result: ImportResult
) -> Workflow | None:
    prompts = data.get("system_prompt") if isinstance(data.get("system_prompt"), dict) else {}
    slots: dict[str, str] = {}  # expert name -> expert_1, expert_2, ... in order of speaking
    system: dict[str, list[Segment]] = {}
    chat = History("history:chat")
    steps: list[Step] = []
    for index, record in enumerate(data["history"]):
        result.records_read += 1
        name, content = record.get("name"), record.get("content")
        if not isinstance(name, str) or not name or not isinstance(content, str):
            result.skipped["record: name or content missing / not a string"] += 1
            continue
        meta: dict[str, Any] = {"record": index, "role": record.get("role"), "name": name}
        if name == CAPTAIN_TERMINAL:
            agent = name
            meta["llm_call"] = False  # executes the code blocks of the previous message
            sys_segs = []
        else:
            agent = slots.setdefault(name, f"expert_{len(slots) + 1}")
            meta["role_words"] = role_words(name)
            meta["llm_call"] = index > 0  # record 0 is the task handed to the group chat
            if agent not in system:
                # Experts are built per task, yet many runs build an expert with the very same
                # system prompt: content-addressed, app-scoped segments share it where the
                # text is the same.
                system[agent] = text_segments(prompts.get(name) or "", "preamble")
            sys_segs = system[agent]
        # The expert's role words lead its input text: the context a predictor can learn from.
        input_text = f"[{meta['role_words']}]" if "role_words" in meta else None
        step = build_step(
            agent,
            prompt_of(*sys_segs, chat.segment()),
            content,
            options,
            input_text=input_text,
            meta=meta,
        )
        chat.append(step.output_tokens)
        steps.append(step)
    if not steps:
        result.skipped["file: no agent steps"] += 1
        return None
    meta = _labels(data, path)
    meta["team"] = {slot: name for name, slot in slots.items()}
    if options.keep_text:
        meta["system_messages"] = {
            slot: options.text(prompts.get(name)) or "" for name, slot in slots.items()
        }
    meta["experts_without_turn"] = sorted(set(prompts) - set(slots))
    return Workflow(
        workflow_id=run_id(CAPTAIN_APP, path),
        app=CAPTAIN_APP,
        task=data.get("question") or "",
        steps=tuple(steps),
        meta=meta,
    )


# ----------------------------------------------------------------------------- prompt texts


def magentic_prompt_texts(workflow: Workflow) -> list[str]:
    """Each step's prompt text, rebuilt from a Magentic-One trace's texts: the agent's system
    prompt (not in the log: a stand-in of its estimated length), the conversation so far (the
    human request, then every broadcast), and the ledger template on ledger calls."""
    conversation: list[str] = []
    out = []
    for step in workflow.steps:
        conversation.extend(step.meta.get("context", []))
        parts = [
            placeholder_text(f"system:{step.agent}", MAGENTIC_SYSTEM_TOKENS.get(step.agent, 0)),
            *conversation,
        ]
        if step.meta["kind"] in ("plan", "ledger"):
            parts.append(placeholder_text("ledger", MAGENTIC_LEDGER_PROMPT_TOKENS))
        out.append("\n".join(p for p in parts if p))
        if step.meta["kind"] in ("reply", "instruction"):  # broadcast to the team
            conversation.append(step.output_text or "")
    return out


def captain_prompt_texts(workflow: Workflow) -> list[str]:
    """Each step's prompt text, rebuilt from a CaptainAgent trace's texts: the expert's
    system prompt (none for the terminal), then the group chat so far."""
    systems = workflow.meta.get("system_messages", {})
    chat: list[str] = []
    out = []
    for step in workflow.steps:
        out.append("\n".join(p for p in [systems.get(step.agent, ""), *chat] if p))
        chat.append(step.output_text or "")
    return out
