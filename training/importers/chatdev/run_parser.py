"""A ChatDev run log's records into steps: ``RunParser`` follows the phase chats.

Every phase is a fresh two-agent chat: both roles' prompts hold the role's system message, then
that chat's messages so far (the opening prompt, memory notes, the replies). ``record(ts, body)``
takes the records in log order; each reply becomes one step whose prompt is rebuilt as
content-addressed segments (the words of a system message before the customer's task are
app-scoped ``preamble`` content). Usage records pair with the replies that follow them, first-in
first-out within a chat; one left over when a chat ends is counted as skipped in ``result``.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pbkv.trace import Segment, Step
from pbkv.training.importers.base import ImportOptions, ImportResult, build_step
from pbkv.training.importers.chatdev.log_format import camel, seconds, split_bracket
from pbkv.training.importers.content import text_segments

# ChatDev's background prompt (ChatEnvConfig.background_prompt), the first part of every
# agent's system message; with the role's own words it stands in for a system message the log
# does not print (the earliest logs).
BACKGROUND_PROMPT = (
    "ChatDev is a software company powered by multiple intelligent agents, such as chief "
    "executive officer, chief human resources officer, chief product officer, chief technology "
    "officer, etc, with a multi-agent organizational structure and the mission of 'changing "
    "the digital world through programming'."
)
# Where a system message turns from the role's fixed words (the same in every run: app-scoped
# content) to the customer's task (this run's content).
_TASK_MARKER = re.compile(r"Here is a new customer(?:'|\\')s task: ")
_OLD_SYS = re.compile(
    r"^AI (?:Assistant|User) \((?P<role>[^)]+)\) sys message:\s*"
    r"SystemMessage\(.*?, content=(?P<content>(?P<q>['\"]).*(?P=q))\)\s*\Z",
    re.S,
)

_TURN = re.compile(
    r"^(?P<speaker>[^:\n]+): \*\*(?P<a>[^*\n]+?)<->(?P<b>[^*\n]+?) on : "
    r"(?P<phase>[^,*\n]+), turn (?P<turn>\d+)\*\*\s*(?P<text>.*)\Z",
    re.S,
)
_OLD_TURN = re.compile(
    r"^\[(?P<turn>\d+)\] AI (?P<side>Assistant|User) \((?P<speaker>[^)]+)\):"
    r"\s*(?P<text>.*)\Z",
    re.S,
)
_OLD_START = re.compile(r"^AI User \((?P<speaker>[^)]+)\):\s*(?P<text>.*)\Z", re.S)
_START_CHAT = re.compile(r"^(?P<speaker>[^:\n]+): \*\*\[Start Chat\]\*\*\s*(?P<text>.*)\Z", re.S)
_PLAIN = re.compile(r"^(?P<speaker>[A-Z][A-Za-z ]+): (?P<text>.*)\Z", re.S)
_USAGE = re.compile(
    r"^\*{0,2}\[OpenAI_Usage_Info(?: Receive)?\]\*{0,2}\s*"
    r"prompt_tokens: (?P<p>\d+)\s*completion_tokens: (?P<c>\d+)",
    re.S,
)
_TERMINATED = re.compile(r"^\[\d+\] AI (?:Assistant|User) \([^)]+\) terminated the chat\.")
_MEMORY_NOTE = "thinking back "  # "... but find nothing useful" / "... and found some ..."
_ROLE_NAMES = re.compile(r"\*\*(assistant|user)_role_name\*\* \| (?P<name>[^|\n]+?) \|")


@dataclass(slots=True)
class _Chat:
    """One phase chat: its two roles, the messages both roles' prompts hold so far, the
    messages that joined since the last reply (the opening prompt, memory notes), and the usage
    records not yet matched."""

    number: int
    roles: set[str] = field(default_factory=set)
    assistant: str | None = None
    messages: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    usage: deque[tuple[int, int]] = field(default_factory=deque)

    def add(self, text: str) -> None:
        self.messages.append(text)
        self.pending.append(text)


class RunParser:
    def __init__(self, stem: str, task: str, options: ImportOptions, result: ImportResult) -> None:
        self.options = options
        self.result = result
        self.task = task
        self.steps: list[Step] = []
        self.chat: _Chat | None = None
        self.num_chats = 0
        self.t0: float | None = None
        self.last_s: float | None = None
        self.phase: str | None = None
        self.old_format = False
        self.usage_matched = 0
        self.system: dict[str, str] = {}  # role -> its latest system message
        self.system_texts: dict[str, int] = {}  # distinct system messages, in order
        self.segments: dict[tuple[str, str], list[Segment]] = {}  # (kind, text) -> segments
        self.digest = hashlib.sha256()  # over every reply's speaker and text, in order

    # -- chats
    def open_chat(self, roles: set[str], assistant: str | None = None) -> None:
        self.close_chat()
        self.num_chats += 1
        self.chat = _Chat(self.num_chats, roles, assistant)

    def close_chat(self) -> None:
        if self.chat is not None and self.chat.usage:
            self.result.skipped["usage: LLM call with no logged reply"] += len(self.chat.usage)
        self.chat = None

    def _ensure_chat(self) -> _Chat:
        if self.chat is None:
            self.open_chat(set())
        assert self.chat is not None
        return self.chat

    # -- records
    def record(self, ts: str, body: str) -> None:
        now = seconds(ts)
        if now is not None:
            self.t0 = now if self.t0 is None else self.t0
            # clock jumps backwards (rare, DST / restarts) are clamped: steps stay ordered
            self.last_s = max(now - self.t0, self.last_s or 0.0)
        if body.startswith("System: **[RolePlaying]**"):
            self.phase = None
            names = dict((m.group(1), m.group("name").strip()) for m in _ROLE_NAMES.finditer(body))
            self.open_chat(set(names.values()), names.get("assistant"))
        elif body.startswith("PhaseType: "):
            self.old_format = True
            self.phase = camel(body.split("PhaseType.", 1)[-1].split()[0])
            self.open_chat(set())
        elif (m := _OLD_SYS.match(body)) is not None:
            self._old_system(m)
        elif "embedding" in body and "[OpenAI_Usage_Info" in body:
            # memory lookups embed text; no chat reply comes of it
            self.result.skipped["usage: embedding call of the experience memory"] += 1
        elif _TERMINATED.match(body):
            self.close_chat()  # the next reply opens a new chat (logs without PhaseType)
        elif (m := _USAGE.match(body)) is not None:
            self._ensure_chat().usage.append((int(m.group("p")), int(m.group("c"))))
        elif (m := _START_CHAT.match(body)) or (m := _OLD_START.match(body)):
            chat = self._ensure_chat()
            bracket, message = split_bracket(m.group("text"))
            if bracket is not None and chat.assistant:
                self.system[chat.assistant] = bracket  # the opening shows the assistant's
            chat.add(message)
        elif (m := _TURN.match(body)) is not None:
            self.phase = m.group("phase").strip()
            speaker = m.group("speaker").strip()
            bracket, message = split_bracket(m.group("text"))
            if bracket is not None:  # a reply shows the other role's system message
                pair = (m.group("a").strip(), m.group("b").strip())
                self.system[pair[1] if speaker == pair[0] else pair[0]] = bracket
            self.turn(speaker, message, int(m.group("turn")))
        elif (m := _OLD_TURN.match(body)) is not None:
            self.old_format = True
            self.turn(m.group("speaker").strip(), m.group("text").strip(), int(m.group("turn")))
        elif (m := _PLAIN.match(body)) is not None:
            self._plain(m.group("speaker"), m.group("text"))

    def _old_system(self, m: re.Match[str]) -> None:
        try:
            content = ast.literal_eval(m.group("content"))
        except (ValueError, SyntaxError):
            return
        if isinstance(content, str):
            self.system[m.group("role").strip()] = content
            if self.chat is not None:
                self.chat.roles.add(m.group("role").strip())

    def _plain(self, speaker: str, text: str) -> None:
        if text.startswith(_MEMORY_NOTE):
            # ChatDev's experience memory: a lookup, no LLM call; what it found goes into the
            # chat's prompts, so it joins the chat's messages
            self.result.records_read += 1
            self.result.skipped["record: memory-retrieval note (no LLM call)"] += 1
            if self.chat is not None:
                self.chat.add(text.split(":", 1)[-1].strip())
        elif self.chat is not None and speaker in self.chat.roles:
            # a reply without a turn marker (the prompt-engineering chat of later logs)
            self.turn(speaker, text.strip(), 0)

    def turn(self, speaker: str, text: str, turn: int) -> None:
        self.result.records_read += 1
        self.digest.update(f"{speaker}\0{text}\0".encode())
        chat = self._ensure_chat()
        usage = chat.usage.popleft() if chat.usage else None
        system = self.system.get(speaker) or fallback_system(speaker, self.task)
        system_index = self.system_texts.setdefault(system, len(self.system_texts))
        meta: dict[str, Any] = {"turn": turn, "chat": chat.number, "system": system_index}
        if chat.pending and self.options.keep_text:
            meta["context"] = [self.options.text(t) for t in chat.pending]
            chat.pending = []
        if speaker not in self.system:
            meta["system_source"] = "fallback"
        prompt = self._segments(system, "system")
        for message in chat.messages:
            prompt.extend(self._segments(message, "history"))
        if usage is not None:
            self.usage_matched += 1
            meta["prompt_tokens"], output_tokens = usage
        else:
            output_tokens = None  # counted from the text
        meta["token_source"] = "usage" if usage is not None else "approx"
        step = build_step(
            speaker,
            tuple(prompt),
            text,
            self.options,
            output_tokens=output_tokens,
            start_s=self.last_s,
            phase=self.phase,
            meta=meta,
        )
        chat.messages.append(text)
        self.steps.append(step)

    def _segments(self, text: str, kind: str) -> list[Segment]:
        """Content-addressed segments of one prompt part; a system message's words before
        the customer's task are app-scoped (the same in every run)."""
        key = (kind, text)
        if key not in self.segments:
            split = _TASK_MARKER.search(text) if kind == "system" else None
            if split is None:
                self.segments[key] = text_segments(text)
            else:
                self.segments[key] = text_segments(text[: split.end()], "preamble") + text_segments(
                    text[split.end() :]
                )
        return list(self.segments[key])


def fallback_system(role: str, task: str) -> str:
    """A system message for a role whose own the log never prints (the earliest logs)."""
    return (
        f"{BACKGROUND_PROMPT}\nYou are {role}. we are both working at ChatDev.\n"
        f"Here is a new customer's task: {task}."
    )
