"""Trace files: strict parsing, every bad-input case, skip_invalid accounting, round trips."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import jsonschema
import pytest

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.samples import sample_paths
from pbkv.training.trace_io import (
    TraceError,
    iter_workflows,
    load_workflows,
    read_workflows,
    validate_file,
    write_workflows,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "docs" / "trace-format.schema.json"


def wf_dict(workflow_id: str = "w1", **overrides) -> dict:
    """A valid trace line: two agents, a growing history, times in order."""
    d = {
        "format": "pbkv.trace.v1",
        "workflow_id": workflow_id,
        "app": "demo",
        "tenant": "t",
        "task": "write a game",
        "steps": [
            {
                "agent": "planner",
                "prompt": [
                    {"id": "system:planner", "tokens": 100},
                    {"id": "history:chat", "tokens": 10},
                    {"id": "new", "tokens": 5},
                ],
                "output_tokens": 20,
                "start_s": 0.0,
                "end_s": 1.5,
                "phase": "plan",
            },
            {
                "agent": "coder",
                "prompt": [
                    {"id": "system:coder", "tokens": 200},
                    {"id": "history:chat", "tokens": 30},
                ],
                "output_tokens": 40,
                "start_s": 2.0,
                "parallel_group": "g1",
                "meta": {"note": "x"},
            },
        ],
    }
    d.update(overrides)
    return d


def write_lines(path: Path, lines: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def problems_of(tmp_path: Path, *lines) -> list[tuple[int | None, str, str]]:
    path = write_lines(tmp_path / "t.jsonl", list(lines))
    return [(p.line, p.field, p.message) for p in validate_file(path)]


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


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_load_round_trips(tmp_path, suffix):
    wfs = load_workflows(write_lines(tmp_path / "in.jsonl", [wf_dict("a"), wf_dict("b")]))
    out = tmp_path / f"out{suffix}"
    assert write_workflows(out, wfs) == 2
    back = load_workflows(out)
    assert back == wfs
    assert [w.meta for w in back] == [w.meta for w in wfs]
    assert [s.meta for s in back[0].steps] == [s.meta for s in wfs[0].steps]


def test_gzip_output_is_byte_identical_for_the_same_workflows(tmp_path):
    wfs = load_workflows(write_lines(tmp_path / "in.jsonl", [wf_dict("a")]))
    write_workflows(tmp_path / "1.jsonl.gz", wfs)
    write_workflows(tmp_path / "2.jsonl.gz", wfs)
    assert (tmp_path / "1.jsonl.gz").read_bytes() == (tmp_path / "2.jsonl.gz").read_bytes()


def test_wrong_types_name_the_field(tmp_path):
    d = wf_dict()
    d["steps"][0]["agent"] = 7
    d["steps"][1]["output_tokens"] = "40"
    d["steps"][1]["prompt"][0]["tokens"] = True  # a boolean is not a token count
    d["arrival_s"] = "soon"
    assert problems_of(tmp_path, d) == [
        (1, "arrival_s", "must be a number or null, got string"),
        (1, "steps[0].agent", "must be a string, got integer"),
        (1, "steps[1].output_tokens", "must be an integer, got string"),
        (1, "steps[1].prompt[0].tokens", "must be an integer, got boolean"),
    ]


def test_unknown_and_missing_fields(tmp_path):
    d = wf_dict()
    d["colour"] = "red"
    d["steps"][0]["prompt"][1]["cached"] = True
    del d["steps"][1]["output_tokens"]
    del d["app"]
    assert problems_of(tmp_path, d) == [
        (1, "colour", "unknown field"),
        (1, "app", "missing required field"),
        (1, "steps[0].prompt[1].cached", "unknown field"),
        (1, "steps[1].output_tokens", "missing required field"),
    ]


def test_negative_tokens(tmp_path):
    d = wf_dict()
    d["steps"][0]["prompt"][1]["tokens"] = -3
    assert problems_of(tmp_path, d) == [(1, "steps[0].prompt[1].tokens", "must be >= 0, got -3")]


def test_bad_segment_ids(tmp_path):
    d = wf_dict()
    d["steps"][0]["prompt"][0]["id"] = "sys:planner"
    d["steps"][0]["prompt"][1]["id"] = "history:"
    d["steps"][0]["prompt"][2]["id"] = "new:x"
    got = problems_of(tmp_path, d)
    assert [(line, field) for line, field, _ in got] == [
        (1, "steps[0].prompt[0].id"),
        (1, "steps[0].prompt[1].id"),
        (1, "steps[0].prompt[2].id"),
    ]
    assert "unknown segment kind 'sys'" in got[0][2]


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


def test_steps_out_of_order(tmp_path):
    d = wf_dict()
    d["steps"][1]["start_s"] = 0.5
    d["steps"][0]["start_s"] = 1.0
    assert problems_of(tmp_path, d) == [
        (1, "steps[1].start_s", "steps out of order: starts at 0.5, before the previous step's 1.0")
    ]


def test_end_before_start(tmp_path):
    d = wf_dict()
    d["steps"][0]["end_s"] = 0.0
    d["steps"][0]["start_s"] = 0.5
    d["steps"][1]["start_s"] = 0.5
    assert problems_of(tmp_path, d) == [
        (1, "steps[0].end_s", "ends before it starts (0.0 < start_s 0.5)")
    ]


def test_history_must_not_shrink(tmp_path):
    d = wf_dict()
    d["steps"][1]["prompt"][1]["tokens"] = 9
    assert problems_of(tmp_path, d) == [
        (
            1,
            "steps[1].prompt[1].tokens",
            "history 'history:chat' shrinks from 10 tokens (steps[0]) to 9",
        )
    ]


def test_system_segment_of_unknown_agent(tmp_path):
    d = wf_dict()
    d["steps"][1]["prompt"][0]["id"] = "system:reviewer"
    assert problems_of(tmp_path, d) == [
        (
            1,
            "steps[1].prompt[0].id",
            "'system:reviewer' names agent 'reviewer', which is not an agent of this workflow",
        )
    ]


def test_app_scoped_content_must_keep_its_length(tmp_path):
    other = wf_dict("w2")
    other["steps"][1]["prompt"][0]["tokens"] = 201
    got = problems_of(tmp_path, wf_dict("w1"), other)
    assert got == [
        (
            2,
            "steps[1].prompt[0].tokens",
            "app 'demo' content 'system:coder' has 201 tokens here but 200 on line 1; "
            "app-scoped content is one fixed text",
        )
    ]
    # another app may use the same id with its own length
    third = wf_dict("w3", app="other")
    third["steps"][1]["prompt"][0]["tokens"] = 201
    assert problems_of(tmp_path, wf_dict("w1"), third) == []


def test_duplicate_workflow_ids(tmp_path):
    assert problems_of(tmp_path, wf_dict("w1"), wf_dict("w2"), wf_dict("w1")) == [
        (3, "workflow_id", "duplicate workflow id 'w1' (first on line 1)")
    ]


def test_empty_steps_and_zero_token_prompt(tmp_path):
    d = wf_dict("w2")
    d["steps"][0]["prompt"] = [{"id": "new", "tokens": 0}]
    assert problems_of(tmp_path, wf_dict("w1", steps=[]), d) == [
        (1, "steps", "a workflow needs at least one step"),
        (2, "steps[0].prompt", "a prompt needs at least one token"),
    ]


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


def test_written_workflow_is_validated_on_reload(tmp_path):
    wf = Workflow("w", "app", (Step("a", (Segment("system:b", 5),), 1),))
    path = tmp_path / "w.jsonl"
    write_workflows(path, [wf])
    assert [p.field for p in validate_file(path)] == ["steps[0].prompt[0].id"]


# ----------------------------------------------------------------------------- JSON Schema


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


# ----------------------------------------------------------------------------- property


def _workflows_strategy():
    from hypothesis import strategies as st

    name = st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8
    ).filter(lambda s: s.strip() != "")
    agents = st.lists(name, min_size=1, max_size=3, unique=True)

    @st.composite
    def workflow(draw, index: int):
        names = draw(agents)
        steps, history, t = [], 0, 0.0
        for _ in range(draw(st.integers(1, 5))):
            agent = draw(st.sampled_from(names))
            history += draw(st.integers(0, 50))
            t += draw(st.floats(0, 10, allow_nan=False))
            prompt = (
                Segment(f"system:{agent}", 7 * (names.index(agent) + 1)),
                Segment("history:chat", history),
                Segment("new", draw(st.integers(1, 9))),
            )
            steps.append(
                Step(
                    agent=agent,
                    prompt=prompt,
                    output_tokens=draw(st.integers(0, 99)),
                    start_s=t,
                    output_text=draw(st.none() | st.text(max_size=20)),
                    phase=draw(st.none() | name),
                )
            )
        return Workflow(
            workflow_id=f"w{index}", app="prop", steps=tuple(steps), task=draw(st.text(max_size=20))
        )

    return st.integers(1, 3).flatmap(lambda n: st.tuples(*(workflow(i) for i in range(n))))


def test_random_valid_workflows_round_trip(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_workflows_strategy())
    def check(workflows):
        path = tmp_path_factory.mktemp("prop") / "p.jsonl.gz"
        write_workflows(path, workflows)
        assert validate_file(path) == []
        assert tuple(load_workflows(path)) == workflows

    check()
