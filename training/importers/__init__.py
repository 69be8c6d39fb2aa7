"""Importers from real multi-agent framework logs to trace format v1, registered by name.

    name               source                                          app
    who-when-magentic  Who&When Hand-Crafted (Magentic-One) *.json     magentic-one
    who-when-captain   Who&When Algorithm-Generated (CaptainAgent)     captain-agent
    chatdev            ChatDev WareHouse *.log (2023 and later formats) chatdev

``import_source(name, src, options)`` returns an ``ImportResult`` whose ``skipped`` counter
accounts for every record and file not turned into a step. See ``docs/importers.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pbkv.registry import Registry
from pbkv.training.importers.base import (
    ImportOptions,
    ImportResult,
    ProgressFn,
    no_progress,
)
from pbkv.training.importers.chatdev import import_chatdev
from pbkv.training.importers.who_when import import_captain, import_magentic

Importer = Callable[[Path, ImportOptions, ProgressFn], ImportResult]

IMPORTERS: Registry[Importer] = Registry("importer format")
IMPORTERS.register("who-when-magentic")(lambda: import_magentic)
IMPORTERS.register("who-when-captain")(lambda: import_captain)
IMPORTERS.register("chatdev")(lambda: import_chatdev)


def import_source(name: str, src: str | Path, options: ImportOptions | None = None,
                  progress: ProgressFn = no_progress) -> ImportResult:
    """Import ``src`` (a file or a folder) with the importer ``name``."""
    importer = IMPORTERS.create(name)
    return importer(Path(src), options or ImportOptions(), progress)


__all__ = ["IMPORTERS", "ImportOptions", "ImportResult", "import_source"]
