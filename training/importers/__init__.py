"""Importers from real multi-agent framework logs to trace format v1, registered by name.

    name               source                                          app
    who-when-magentic  Who&When Hand-Crafted (Magentic-One) *.json     magentic-one
    who-when-captain   Who&When Algorithm-Generated (CaptainAgent)     captain-agent
    chatdev            ChatDev WareHouse *.log (2023 and later formats) chatdev
    otlp-json          OpenTelemetry spans, OTLP JSON lines (GenAI)    resource service.name

``import_source(name, src, options)`` returns an ``ImportResult`` whose ``skipped`` counter
accounts for every record and file not turned into a step, and refuses two runs with one
workflow id. When an import recognises nothing, ``detect_formats(src)`` says which of these
formats the files look like. See ``docs/importers.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from pbkv.registry import Registry
from pbkv.trace import Workflow
from pbkv.training.importers.base import (
    ImportOptions,
    ImportResult,
    ProgressFn,
    check_unique_ids,
    no_progress,
)
from pbkv.training.importers.chatdev import import_chatdev, looks_like_chatdev
from pbkv.training.importers.chatdev import prompt_texts as chatdev_prompt_texts
from pbkv.training.importers.otlp_json import import_otlp_json, looks_like_otlp_json
from pbkv.training.importers.who_when import (
    CAPTAIN_APP,
    MAGENTIC_APP,
    captain_prompt_texts,
    import_captain,
    import_magentic,
    magentic_prompt_texts,
    who_when_kind,
)

Importer = Callable[[Path, ImportOptions, ProgressFn], ImportResult]

IMPORTERS: Registry[Importer] = Registry("importer format")
IMPORTERS.register("who-when-magentic")(lambda: import_magentic)
IMPORTERS.register("who-when-captain")(lambda: import_captain)
IMPORTERS.register("chatdev")(lambda: import_chatdev)
IMPORTERS.register("otlp-json")(lambda: import_otlp_json)


def import_source(
    name: str,
    src: str | Path,
    options: ImportOptions | None = None,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import ``src`` (a file or a folder) with the importer ``name``."""
    importer = IMPORTERS.create(name)
    result = importer(Path(src), options or ImportOptions(), progress)
    check_unique_ids(result)
    return result


_PROMPT_TEXTS: dict[str, Callable[[Workflow], list[str]]] = {
    "chatdev": chatdev_prompt_texts,
    MAGENTIC_APP: magentic_prompt_texts,
    CAPTAIN_APP: captain_prompt_texts,
}


def prompt_texts(workflow: Workflow) -> list[str]:
    """The text of each step's prompt, rebuilt from an imported workflow's texts (imported
    with whole texts), for the apps these importers write; ``KeyError`` for another app."""
    return _PROMPT_TEXTS[workflow.app](workflow)


PROBE_FILES = 20  # files looked at by detect_formats


def _probe(path: Path) -> str | None:
    if looks_like_chatdev(path):
        return "chatdev"
    if looks_like_otlp_json(path):
        return "otlp-json"
    kind = who_when_kind(path)
    return None if kind is None else f"who-when-{kind}"


def detect_formats(src: str | Path) -> list[str]:
    """The importer formats the first ``PROBE_FILES`` files of ``src`` (a file or a folder)
    look like, most files first; empty if none."""
    src = Path(src)
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file())
    found = Counter(fmt for p in islice(files, PROBE_FILES) if (fmt := _probe(p)))
    return [fmt for fmt, _ in found.most_common()]


__all__ = [
    "IMPORTERS",
    "ImportOptions",
    "ImportResult",
    "detect_formats",
    "import_source",
    "prompt_texts",
]
