"""The importer registry and what every importer shares: text options, refused duplicate ids,
format detection, and the bundled samples as a fresh import of the real logs."""

from __future__ import annotations

import pytest

from pbkv.registry import UnknownNameError
from pbkv.trace import Segment
from pbkv.training.importers import IMPORTERS, ImportOptions, import_source
from pbkv.training.samples import build, sample_paths


def test_registry_lists_formats():
    assert IMPORTERS.names() == ["chatdev", "otlp-json", "who-when-captain", "who-when-magentic"]
    with pytest.raises(UnknownNameError, match="known: chatdev, otlp-json, who-when-captain"):
        import_source("autogen", ".")


def test_text_truncation_option(datasets_dir):
    path = datasets_dir / "who_and_when" / "Hand-Crafted" / "1.json"
    full = import_source("who-when-magentic", path).workflows[0]
    short = import_source("who-when-magentic", path, ImportOptions(max_text_chars=10))
    none = import_source("who-when-magentic", path, ImportOptions(keep_text=False))
    assert short.workflows[0].steps[0].output_text == full.steps[0].output_text[:10]
    assert short.workflows[0].steps[0].output_tokens == full.steps[0].output_tokens
    assert none.workflows[0].steps[0].output_text is None


def test_duplicate_ids_are_refused_at_import():
    from pbkv.errors import UserError
    from pbkv.trace import Step, Workflow
    from pbkv.training.importers.base import DuplicateIdError, ImportResult, check_unique_ids

    step = Step(agent="A", prompt=(Segment("new", 1),), output_tokens=1)
    result = ImportResult(
        workflows=[
            Workflow("x-1", "x", steps=(step,), meta={"source": "a/1.json"}),
            Workflow("x-2", "x", steps=(step,), meta={"source": "a/2.json"}),
            Workflow("x-1", "x", steps=(step,), meta={"source": "b/1.json"}),
        ]
    )
    with pytest.raises(DuplicateIdError) as info:
        check_unique_ids(result)
    assert str(info.value) == "1 workflow id given to two runs: 'x-1' (a/1.json and b/1.json)"
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize(
    ("folder", "fmt"),
    [
        ("who_and_when/Hand-Crafted", "who-when-magentic"),
        ("who_and_when/Algorithm-Generated", "who-when-captain"),
        ("chatdev_openbmb", "chatdev"),
    ],
)
def test_detect_formats_of_real_folders(datasets_dir, folder, fmt):
    from pbkv.training.importers import detect_formats

    assert detect_formats(datasets_dir / folder) == [fmt]
    assert detect_formats(datasets_dir) == []  # SOURCES.md only: no run logs


@pytest.mark.slow
def test_bundled_samples_are_a_fresh_import(datasets_dir, tmp_path):
    build(datasets_dir, tmp_path)
    for app, path in sample_paths().items():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), app
