"""Reading trace files: blank lines, bad bytes and JSON, corrupt gzip, overlong lines, missing
files, and the skip_invalid accounting (``trace_io/reader.py``)."""

from __future__ import annotations

import gzip
import json

import pytest
from trace_lines import problems_of, wf_dict, write_lines  # same folder (pytest prepend mode)

from pbkv.trace import Segment, Step
from pbkv.training.trace_io import (
    TraceError,
    iter_workflows,
    load_workflows,
    read_workflows,
    validate_file,
)


def test_valid_file_loads_into_dataclasses(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [wf_dict("w1"), "", wf_dict("w2")])
    wfs = load_workflows(path)
    assert [w.workflow_id for w in wfs] == ["w1", "w2"]  # the blank line is no workflow
    step = wfs[0].steps[0]
    assert step == Step(
        agent="planner",
        prompt=(Segment("system:planner", 100), Segment("history:chat", 10), Segment("new", 5)),
        output_tokens=20,
        start_s=0.0,
        end_s=1.5,
        phase="plan",
    )
    assert wfs[0].steps[1].meta == {"note": "x"}
    assert wfs[0].steps[1].parallel_group == "g1"
    assert validate_file(path) == []


def test_empty_file(tmp_path):
    assert problems_of(tmp_path) == [(None, "", "empty file: no workflows")]
    with pytest.raises(TraceError, match="empty file"):
        load_workflows(tmp_path / "t.jsonl")


def test_truncated_json(tmp_path):
    line = json.dumps(wf_dict())[:-25]
    assert problems_of(tmp_path, wf_dict("ok"), line) == [
        (
            2,
            "",
            "truncated JSON: the line ends inside a value (Expecting property name "
            "enclosed in double quotes)",
        )
    ]


def test_binary_garbage(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(
        json.dumps(wf_dict("ok")).encode() + b"\n\xff\xfe\x00\x81garbage\n" + b'{"a": "\x00"}\n'
    )
    got = [(p.line, p.message) for p in validate_file(path)]
    assert got == [
        (2, "binary garbage: not UTF-8 (byte 0)"),
        (3, "binary garbage: NUL byte at column 8"),
    ]
    assert [w.workflow_id for w in load_workflows(path, skip_invalid=True)] == ["ok"]


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(wf_dict()).encode() + b"\n")[:-12])
    problems = validate_file(path)
    assert len(problems) == 1 and "corrupt" in problems[0].message


def test_non_finite_numbers_and_non_objects(tmp_path):
    line = json.dumps(wf_dict()).replace('"start_s": 0.0', '"start_s": NaN')
    got = problems_of(tmp_path, line, "[1, 2]")
    assert got == [
        (1, "", "invalid JSON: NaN is not a finite number"),
        (2, "", "a line must hold one JSON object, got array"),
    ]


def test_huge_line_is_skipped_unread_and_later_lines_load(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps(wf_dict("a")) + "\n")
        fh.write('{"pad": "' + "x" * 3_000_000 + '"}\n')
        fh.write(json.dumps(wf_dict("b")) + "\n")
    result = read_workflows(path, max_line_bytes=100_000)
    assert [w.workflow_id for w in result.workflows] == ["a", "b"]
    assert [(p.line, p.message) for p in result.problems] == [
        (2, "line longer than 100000 bytes (skipped unread)")
    ]


def test_skip_invalid_loads_valid_lines_and_counts_reasons(tmp_path):
    bad_type = wf_dict("x")
    bad_type["steps"][0]["output_tokens"] = -1
    path = write_lines(
        tmp_path / "mixed.jsonl", [wf_dict("a"), "{not json", bad_type, wf_dict("b"), wf_dict("a")]
    )
    with pytest.raises(TraceError) as info:
        load_workflows(path)
    assert (info.value.line, info.value.field) == (2, "")
    assert len(info.value.problems) == 3
    result = read_workflows(path, skip_invalid=True)
    assert [w.workflow_id for w in result.workflows] == ["a", "b"]
    assert result.skipped_lines == 3
    assert dict(result.skip_reasons) == {
        "invalid JSON": 1,
        "must be >= 0": 1,
        "duplicate workflow id": 1,
    }
    assert result.summary() == (
        "2 workflows loaded, 3 lines skipped (1 x invalid JSON, "
        "1 x must be >= 0, 1 x duplicate workflow id)"
    )
    assert [w.workflow_id for w in load_workflows(path, skip_invalid=True)] == ["a", "b"]


def test_iter_workflows_streams_and_stops_at_the_bad_line(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [wf_dict("a"), "{", wf_dict("b")])
    it = iter_workflows(path)
    assert next(it).workflow_id == "a"
    with pytest.raises(TraceError, match=r"s\.jsonl:2: truncated JSON"):
        next(it)
    assert [w.workflow_id for w in iter_workflows(path, skip_invalid=True)] == ["a", "b"]


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    assert [p.message for p in validate_file(tmp_path / "nope.jsonl")] == ["no such file"]
