"""Reading trace files: bounded, streaming, strict unless told to skip.

Each non-blank line goes through ``LineParser`` (one workflow) and then ``FileChecker`` (checks
that span lines); a line either loads whole or yields its problems. The reader is bounded: a
line longer than ``max_line_bytes`` is skipped over in fixed-size chunks and reported, so a
corrupt multi-gigabyte "line" never sits in memory. A missing, empty, unreadable or corrupt
(gzip) file is a ``Problem`` too, never a traceback.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pbkv.trace import Workflow
from pbkv.training.trace_io.file_checks import FileChecker
from pbkv.training.trace_io.line_parser import LineParser
from pbkv.training.trace_io.problems import LoadResult, Problem, TraceError, skip_reason

log = logging.getLogger(__package__)  # pbkv.training.trace_io, as before the split

DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
_READ_CHUNK_BYTES = 1024 * 1024


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
                for reason in sorted({skip_reason(p) for p in line_problems}):
                    result.skip_reasons[reason] += 1
    if result.problems and not skip_invalid:
        raise TraceError(result.problems)
    return result


def _iter_parsed(path: Path, max_line_bytes: int) -> Iterator[Workflow | list[Problem]]:
    name = str(path)
    checker = FileChecker(name)
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
    parser = LineParser(path, lineno)
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
