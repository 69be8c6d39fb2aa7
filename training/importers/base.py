"""What every importer shares: the result type, file discovery and step building.

An importer turns one source (a file or a folder of files) of a framework's logs into trace
workflows. It never drops anything quietly: every record or file it does not turn into a step
is counted in ``ImportResult.skipped`` under a reason. Reasons say what was skipped:

    record: ...   an agent record of the log (a message, a reply) that is not a step;
                  records_read == steps written + sum of the ``record:`` counts
    file: ...     a whole file that holds no run (empty, another tool's log, no replies)
    usage: ...    an LLM-usage line that no logged reply belongs to
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbkv.errors import UserError
from pbkv.trace import Segment, Step, Workflow
from pbkv.training.tokens import approx_tokens


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """``max_text_chars``: keep at most this many characters of each input/output text
    (``None`` keeps them whole; token counts are always computed on the whole text)."""

    max_text_chars: int | None = None
    keep_text: bool = True

    def __post_init__(self) -> None:
        if self.max_text_chars is not None and self.max_text_chars < 0:
            raise ValueError(f"max_text_chars must be >= 0, got {self.max_text_chars}")

    def text(self, value: str | None) -> str | None:
        if value is None or not self.keep_text:
            return None
        if self.max_text_chars is not None and len(value) > self.max_text_chars:
            return value[: self.max_text_chars]
        return value


@dataclass(slots=True)
class ImportResult:
    workflows: list[Workflow] = field(default_factory=list)
    files_read: int = 0
    records_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def steps(self) -> int:
        return sum(len(w.steps) for w in self.workflows)

    def summary(self) -> str:
        lines = [
            f"{plural(self.files_read, 'file')}, "
            f"{plural(self.records_read, 'agent record')} -> "
            f"{plural(len(self.workflows), 'workflow')}, {plural(self.steps, 'step')}"
        ]
        if self.skipped:
            lines.append("skipped (every one counted):")
            lines.extend(f"  {n:6d}  {reason}" for reason, n in sorted(self.skipped.items()))
        else:
            lines.append("skipped: nothing")
        return "\n".join(lines)


class DuplicateIdError(ValueError, UserError):
    """Two imported runs were given the same workflow id (an importer bug: ids are built to
    be unique); the message names the id and both sources."""


def check_unique_ids(result: ImportResult) -> None:
    """Raise ``DuplicateIdError`` listing every workflow id given to more than one run."""
    first: dict[str, Workflow] = {}
    clashes = []
    for wf in result.workflows:
        other = first.setdefault(wf.workflow_id, wf)
        if other is not wf:
            clashes.append(f"{wf.workflow_id!r} ({_source(other)} and {_source(wf)})")
    if clashes:
        raise DuplicateIdError(
            f"{plural(len(clashes), 'workflow id')} given to two runs: " + "; ".join(clashes)
        )


def _source(wf: Workflow) -> str:
    return str(wf.meta.get("source", "?"))


def plural(count: int, noun: str) -> str:
    """``plural(1, "file")`` -> ``1 file``; ``plural(2, "file")`` -> ``2 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def run_id(prefix: str, path: Path) -> str:
    """A workflow id for the run in file ``path``: ``prefix-<whole file stem>``. Importers read
    one folder (not its sub-folders), so stems, and therefore ids, are unique."""
    return f"{prefix}-{path.stem}"


ProgressFn = Callable[[Iterable[Path]], Iterable[Path]]


def source_files(src: Path, pattern: str) -> list[Path]:
    """``src`` itself, or the files in folder ``src`` matching ``pattern``, in natural order
    (``2.json`` before ``10.json``)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or folder")
    return sorted(src.glob(pattern), key=_natural_key)


def _natural_key(path: Path) -> tuple[Any, ...]:
    stem = path.name.split(".")[0]
    return (0, int(stem), path.name) if stem.isdigit() else (1, 0, path.name)


def no_progress(paths: Iterable[Path]) -> Iterator[Path]:
    yield from paths


class History:
    """Token count of one growing shared context (a stream whose prefix each prompt reuses)."""

    def __init__(self, seg_id: str) -> None:
        self.seg_id = seg_id
        self.tokens = 0

    def segment(self) -> Segment | None:
        return Segment(self.seg_id, self.tokens) if self.tokens else None

    def append(self, tokens: int) -> None:
        assert tokens >= 0
        self.tokens += tokens


def prompt_of(*segments: Segment | None) -> tuple[Segment, ...]:
    """The non-empty segments in order (a zero-token segment names nothing)."""
    return tuple(s for s in segments if s is not None and s.tokens > 0)


def text_tokens(text: str | None) -> int:
    return approx_tokens(text) if text else 0


def ensure_prompt(prompt: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """A prompt always holds at least one token: the framework sent *something*."""
    return prompt if sum(s.tokens for s in prompt) else (Segment("new", 1),)


def build_step(
    agent: str,
    prompt: tuple[Segment, ...],
    output_text: str | None,
    options: ImportOptions,
    *,
    output_tokens: int | None = None,
    input_text: str | None = None,
    **kwargs: Any,
) -> Step:
    if output_tokens is None:
        output_tokens = text_tokens(output_text)
    return Step(
        agent=agent,
        prompt=ensure_prompt(prompt),
        output_tokens=output_tokens,
        input_text=options.text(input_text),
        output_text=options.text(output_text),
        **kwargs,
    )
