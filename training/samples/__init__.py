"""Real multi-agent workflows, imported from public logs and shipped with pbkv.

    app            file                    source (see ATTRIBUTION.md)          license
    magentic-one   magentic-one.jsonl.gz   Who&When, Hand-Crafted (40 runs)     MIT
    captain-agent  captain-agent.jsonl.gz  Who&When, Algorithm-Generated (90)   MIT
    chatdev        chatdev.jsonl.gz        ChatDev WareHouse logs (101 runs)    Apache-2.0

Texts are kept whole (the three files are ~2.3 MB together). Rebuild them from the shared
datasets with ``python -m pbkv.training.samples`` (the same ``pbkv traces import`` commands);
``tests/training/test_importers.py`` checks that a fresh import gives the shipped bytes.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent

# app -> (importer format, dataset sub-folder under ../shared/datasets)
SOURCES = {
    "magentic-one": ("who-when-magentic", "who_and_when/Hand-Crafted"),
    "captain-agent": ("who-when-captain", "who_and_when/Algorithm-Generated"),
    "chatdev": ("chatdev", "chatdev_openbmb"),
}


def sample_paths() -> dict[str, Path]:
    """app -> the bundled trace file (format v1, gzipped JSON Lines)."""
    return {app: SAMPLES_DIR / f"{app}.jsonl.gz" for app in SOURCES}


def build(datasets_dir: Path, out_dir: Path = SAMPLES_DIR) -> dict[str, str]:
    """Import every dataset into ``out_dir``; returns app -> import summary."""
    from pbkv.training.importers import import_source
    from pbkv.training.trace_io import write_workflows

    summaries = {}
    for app, (fmt, sub) in SOURCES.items():
        result = import_source(fmt, datasets_dir / sub)
        write_workflows(out_dir / f"{app}.jsonl.gz", result.workflows)
        summaries[app] = result.summary()
    return summaries
