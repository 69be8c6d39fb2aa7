"""The JSON Schema (``docs/trace-format.schema.json``) accepts the bundled samples and
rejects what the parser rejects."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import jsonschema
from trace_lines import wf_dict  # same folder (pytest prepend mode)

from pbkv.training.samples import sample_paths
from pbkv.training.trace_io import validate_file

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "docs" / "trace-format.schema.json"


def _schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_every_bundled_sample_validates_against_the_json_schema():
    validator = _schema_validator()
    for app, path in sample_paths().items():
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh]
        assert lines, app
        for i, obj in enumerate(lines, 1):
            errors = list(validator.iter_errors(obj))
            assert not errors, f"{path}:{i}: {errors[0].message}"
        assert validate_file(path) == []


def test_json_schema_rejects_what_the_parser_rejects():
    validator = _schema_validator()
    assert validator.is_valid(wf_dict())
    cases = []
    for mutate in (
        lambda d: d.update(colour=1),
        lambda d: d["steps"][0].pop("agent"),
        lambda d: d["steps"][0]["prompt"][0].update(tokens=-1),
        lambda d: d["steps"][0]["prompt"][0].update(id="sys:x"),
        lambda d: d.update(steps=[]),
        lambda d: d.update(format="pbkv.trace.v2"),
    ):
        d = copy.deepcopy(wf_dict())
        mutate(d)
        cases.append(validator.is_valid(d))
    assert cases == [False] * 6
