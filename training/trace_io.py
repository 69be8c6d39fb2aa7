"""Reading, validating and writing trace files (format v1, see ``docs/trace-format.md``).

A trace file is JSON Lines (``.jsonl``) or gzipped JSON Lines (``.jsonl.gz``), one workflow
per line. Parsing is strict: every problem becomes a ``Problem`` naming the file, the line and
the field as a JSON path (``steps[3].prompt[1].tokens``). Nothing is ever repaired or dropped
quietly: a line either loads whole, or (with ``skip_invalid``) is skipped and counted with its
reasons in the ``LoadResult``.

The reader is bounded: a line longer than ``max_line_bytes`` is skipped over in fixed-size
chunks and reported, so a corrupt multi-gigabyte "line" never sits in memory.

Checks that span lines (``validate_file`` and every load run them):

    duplicate workflow_id              a later line reuses an id
    app-scoped content length          ``system:X`` / ``preamble:X`` of one app must always hold
                                       the same number of tokens (they name one fixed text)
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pbkv.errors import UserError
from pbkv.trace import FORMAT_VERSION, SEGMENT_KINDS, Segment, Step, Workflow, to_dict
from pbkv.training.importers.base import plural

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
_READ_CHUNK_BYTES = 1024 * 1024

WORKFLOW_FIELDS = {"format", "workflow_id", "app", "tenant", "task", "arrival_s", "meta", "steps"}
WORKFLOW_REQUIRED = ("format", "workflow_id", "app", "steps")
STEP_FIELDS = {
    "agent",
    "prompt",
    "output_tokens",
    "parallel_group",
    "start_s",
    "end_s",
    "input_text",
    "output_text",
    "phase",
    "meta",
}
STEP_REQUIRED = ("agent", "prompt", "output_tokens")
SEGMENT_FIELDS = {"id", "tokens"}


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


# ----------------------------------------------------------------------------- raw lines


def _open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # closed by the caller's with-block


def _raw_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without newline) or (line number, None) for an overlong line,
    which is consumed in chunks and never held whole."""
    lineno = 0
    while True:
        chunk = fh.readline(max_line_bytes + 1)
        if not chunk:
            return
        lineno += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):
                chunk = fh.readline(_READ_CHUNK_BYTES)
            yield lineno, None
            continue
        yield lineno, chunk.rstrip(b"\r\n")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


# ----------------------------------------------------------------------------- field parsing


class _LineParser:
    """Parses one decoded JSON object into a Workflow, collecting every problem."""

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line
        self.problems: list[Problem] = []

    def bad(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.line, where, message))

    def _fields(
        self, obj: dict[str, Any], where: str, allowed: set[str], required: tuple[str, ...]
    ) -> None:
        prefix = f"{where}." if where else ""
        for key in sorted(set(obj) - allowed):
            self.bad(f"{prefix}{key}", "unknown field")
        for key in required:
            if key not in obj:
                self.bad(f"{prefix}{key}", "missing required field")

    def _str(
        self,
        obj: dict[str, Any],
        key: str,
        where: str,
        *,
        optional: bool = False,
        nonempty: bool = True,
        default: str | None = None,
    ) -> str | None:
        value = obj.get(key, default)
        if value is None:
            if not optional and key in obj:
                self.bad(where, "must be a string, got null")
            return None
        if not isinstance(value, str):
            self.bad(where, f"must be a string, got {_type_name(value)}")
            return None
        if nonempty and not value.strip():
            self.bad(where, "must not be empty")
            return None
        return value

    def _int(self, obj: dict[str, Any], key: str, where: str) -> int | None:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            if key in obj:
                self.bad(where, f"must be an integer, got {_type_name(value)}")
            return None
        if value < 0:
            self.bad(where, f"must be >= 0, got {value}")
            return None
        return value

    def _time(self, obj: dict[str, Any], key: str, where: str) -> float | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(where, f"must be a number or null, got {_type_name(value)}")
            return None
        if not math.isfinite(value) or value < 0:
            self.bad(where, f"must be a finite number >= 0, got {value}")
            return None
        return float(value)

    def _meta(self, obj: dict[str, Any], where: str) -> dict[str, Any]:
        value = obj.get("meta", {})
        if not isinstance(value, dict):
            self.bad(where, f"must be an object, got {_type_name(value)}")
            return {}
        return value

    def segment(self, obj: Any, where: str) -> Segment | None:
        if not isinstance(obj, dict):
            self.bad(where, f"must be an object, got {_type_name(obj)}")
            return None
        self._fields(obj, where, SEGMENT_FIELDS, ("id", "tokens"))
        seg_id = self._str(obj, "id", f"{where}.id")
        tokens = self._int(obj, "tokens", f"{where}.tokens")
        if seg_id is not None:
            kind, sep, name = seg_id.partition(":")
            if kind not in SEGMENT_KINDS:
                self.bad(
                    f"{where}.id",
                    f"unknown segment kind {kind!r} in {seg_id!r}; "
                    f"known: {', '.join(SEGMENT_KINDS)}",
                )
                seg_id = None
            elif kind == "new" and sep:
                self.bad(f"{where}.id", f"'new' takes no name, got {seg_id!r}")
                seg_id = None
            elif kind != "new" and not name:
                self.bad(f"{where}.id", f"{kind!r} needs a name: '{kind}:<name>'")
                seg_id = None
        if seg_id is None or tokens is None:
            return None
        return Segment(seg_id, tokens)

    def step(self, obj: Any, where: str) -> Step | None:
        if not isinstance(obj, dict):
            self.bad(where, f"must be an object, got {_type_name(obj)}")
            return None
        before = len(self.problems)
        self._fields(obj, where, STEP_FIELDS, STEP_REQUIRED)
        agent = self._str(obj, "agent", f"{where}.agent")
        output_tokens = self._int(obj, "output_tokens", f"{where}.output_tokens")
        prompt_raw = obj.get("prompt")
        segments: list[Segment] = []
        if "prompt" in obj and not isinstance(prompt_raw, list):
            self.bad(f"{where}.prompt", f"must be an array, got {_type_name(prompt_raw)}")
        elif isinstance(prompt_raw, list):
            for j, seg_obj in enumerate(prompt_raw):
                seg = self.segment(seg_obj, f"{where}.prompt[{j}]")
                if seg is not None:
                    segments.append(seg)
        complete = isinstance(prompt_raw, list) and len(segments) == len(prompt_raw)
        if complete and sum(s.tokens for s in segments) == 0:
            self.bad(f"{where}.prompt", "a prompt needs at least one token")
        start_s = self._time(obj, "start_s", f"{where}.start_s")
        end_s = self._time(obj, "end_s", f"{where}.end_s")
        if start_s is not None and end_s is not None and end_s < start_s:
            self.bad(f"{where}.end_s", f"ends before it starts ({end_s} < start_s {start_s})")
        texts = {
            k: self._str(obj, k, f"{where}.{k}", optional=True, nonempty=False)
            for k in ("input_text", "output_text")
        }
        group = self._str(obj, "parallel_group", f"{where}.parallel_group", optional=True)
        phase = self._str(obj, "phase", f"{where}.phase", optional=True)
        meta = self._meta(obj, f"{where}.meta")
        if len(self.problems) > before or agent is None or output_tokens is None:
            return None
        return Step(
            agent=agent,
            prompt=tuple(segments),
            output_tokens=output_tokens,
            parallel_group=group,
            start_s=start_s,
            end_s=end_s,
            input_text=texts["input_text"],
            output_text=texts["output_text"],
            phase=phase,
            meta=meta,
        )

    def workflow(self, obj: Any) -> Workflow | None:
        if not isinstance(obj, dict):
            self.bad("", f"a line must hold one JSON object, got {_type_name(obj)}")
            return None
        self._fields(obj, "", WORKFLOW_FIELDS, WORKFLOW_REQUIRED)
        fmt = obj.get("format")
        if "format" in obj and fmt != FORMAT_VERSION:
            self.bad("format", f"must be {FORMAT_VERSION!r}, got {fmt!r}")
        workflow_id = self._str(obj, "workflow_id", "workflow_id")
        app = self._str(obj, "app", "app")
        tenant = self._str(obj, "tenant", "tenant", default="default")
        task = self._str(obj, "task", "task", nonempty=False, default="")
        arrival_s = self._time(obj, "arrival_s", "arrival_s")
        meta = self._meta(obj, "meta")
        steps_raw = obj.get("steps")
        steps: list[Step | None] = []
        if "steps" in obj and not isinstance(steps_raw, list):
            self.bad("steps", f"must be an array, got {_type_name(steps_raw)}")
        elif isinstance(steps_raw, list):
            if not steps_raw:
                self.bad("steps", "a workflow needs at least one step")
            steps = [self.step(s, f"steps[{i}]") for i, s in enumerate(steps_raw)]
        if self.problems:
            return None
        assert workflow_id is not None and app is not None and tenant is not None
        wf = Workflow(
            workflow_id=workflow_id,
            app=app,
            tenant=tenant,
            task=task or "",
            arrival_s=arrival_s,
            meta=meta,
            steps=tuple(s for s in steps if s is not None),
        )
        self._order(wf)
        return None if self.problems else wf

    def _order(self, wf: Workflow) -> None:
        """Checks between the steps of one workflow."""
        agents = set(wf.agents)
        last_start: float | None = None
        history_len: dict[str, tuple[int, int]] = {}  # id -> (tokens, step index)
        for i, step in enumerate(wf.steps):
            if step.start_s is not None:
                if last_start is not None and step.start_s < last_start:
                    self.bad(
                        f"steps[{i}].start_s",
                        f"steps out of order: starts at "
                        f"{step.start_s}, before the previous step's {last_start}",
                    )
                last_start = step.start_s
            for j, seg in enumerate(step.prompt):
                where = f"steps[{i}].prompt[{j}]"
                if seg.kind == "system" and seg.name not in agents:
                    self.bad(
                        f"{where}.id",
                        f"{seg.id!r} names agent {seg.name!r}, which is "
                        f"not an agent of this workflow",
                    )
                if seg.kind == "history":
                    prev = history_len.get(seg.id)
                    if prev is not None and seg.tokens < prev[0]:
                        self.bad(
                            f"{where}.tokens",
                            f"history {seg.id!r} shrinks from "
                            f"{prev[0]} tokens (steps[{prev[1]}]) to {seg.tokens}",
                        )
                    history_len[seg.id] = (seg.tokens, i)


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- file level


class _FileChecker:
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


def _reason(problem: Problem) -> str:
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


def read_workflows(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = True,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> LoadResult:
    """Parse a whole file, collecting every problem. Valid lines always load; with
    ``skip_invalid=False`` any problem raises ``TraceError`` (listing all of them)."""
    result = LoadResult()
    for item in _iter_parsed(Path(path), max_line_bytes):
        if isinstance(item, Workflow):
            result.workflows.append(item)
        else:
            line_problems = item
            result.problems.extend(line_problems)
            if line_problems[0].line is not None:
                result.skipped_lines += 1
                for reason in sorted({_reason(p) for p in line_problems}):
                    result.skip_reasons[reason] += 1
    if result.problems and not skip_invalid:
        raise TraceError(result.problems)
    return result


def _iter_parsed(path: Path, max_line_bytes: int) -> Iterator[Workflow | list[Problem]]:
    name = str(path)
    checker = _FileChecker(name)
    if not path.is_file():
        yield [Problem(name, None, "", "no such file")]
        return
    nonblank = 0
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for lineno, raw in _raw_lines(fh, max_line_bytes):
                if raw is not None and not raw.strip():
                    continue  # blank lines carry no workflow
                nonblank += 1
                item = _parse_line(name, lineno, raw, max_line_bytes)
                if isinstance(item, Workflow):
                    cross = checker.check(item, lineno)
                    yield cross or item
                else:
                    yield item
    except (OSError, EOFError, zlib.error) as exc:
        yield [Problem(name, lineno + 1, "", f"unreadable or corrupt file: {exc}")]
        return
    if nonblank == 0:
        yield [Problem(name, None, "", "empty file: no workflows")]


def _parse_line(
    path: str, lineno: int, raw: bytes | None, max_line_bytes: int
) -> Workflow | list[Problem]:
    def one(message: str) -> list[Problem]:
        return [Problem(path, lineno, "", message)]

    if raw is None:
        return one(f"line longer than {max_line_bytes} bytes (skipped unread)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return one(f"binary garbage: not UTF-8 (byte {exc.start})")
    if "\x00" in text:
        return one(f"binary garbage: NUL byte at column {text.index(chr(0)) + 1}")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            return one(f"truncated JSON: the line ends inside a value ({exc.msg})")
        return one(f"invalid JSON at column {exc.colno}: {exc.msg}")
    except ValueError as exc:
        return one(f"invalid JSON: {exc}")
    parser = _LineParser(path, lineno)
    wf = parser.workflow(obj)
    return wf if wf is not None else parser.problems


def iter_workflows(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Workflow]:
    """Workflows one by one, streaming. A bad line raises ``TraceError`` at that line unless
    ``skip_invalid``; skipped lines are logged (use ``read_workflows`` to get the counts)."""
    skipped = 0
    for item in _iter_parsed(Path(path), max_line_bytes):
        if isinstance(item, Workflow):
            yield item
        elif not skip_invalid:
            raise TraceError(item)
        else:
            skipped += 1
            for problem in item:
                log.warning("skipped: %s", problem)
    if skipped:
        log.warning("%s: %d lines skipped", path, skipped)


def load_workflows(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> list[Workflow]:
    """Every workflow of a trace file. Strict by default: the first bad file raises
    ``TraceError`` listing every problem. With ``skip_invalid`` the valid workflows load and
    the skipped lines (with reasons) are logged as a warning."""
    result = read_workflows(path, skip_invalid=skip_invalid, max_line_bytes=max_line_bytes)
    if result.problems:
        log.warning("%s: %s", path, result.summary())
    return result.workflows


def validate_file(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[Problem]:
    """Every problem in a trace file (empty list: the file is valid)."""
    return read_workflows(path, skip_invalid=True, max_line_bytes=max_line_bytes).problems


def dumps_workflow(workflow: Workflow) -> str:
    """One trace line (no newline)."""
    return json.dumps(to_dict(workflow), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_workflows(path: str | os.PathLike[str], workflows: Iterable[Workflow]) -> int:
    """Write a trace file atomically (``.gz`` suffix: gzip, with a fixed mtime so the same
    workflows always give the same bytes). Returns the number of workflows written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as raw:
            if target.name.endswith(".gz"):
                fh: Any = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            else:
                fh = raw
            try:
                for wf in workflows:
                    fh.write(dumps_workflow(wf).encode("utf-8") + b"\n")
                    count += 1
            finally:
                if fh is not raw:
                    fh.close()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
