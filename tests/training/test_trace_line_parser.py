"""One trace line, strictly: every field-level problem named by its JSON path, and the checks
between the steps of one workflow (``trace_io/line_parser.py``)."""

from __future__ import annotations

from trace_lines import problems_of, wf_dict  # same folder (pytest prepend mode)


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


def test_empty_steps_and_zero_token_prompt(tmp_path):
    d = wf_dict("w2")
    d["steps"][0]["prompt"] = [{"id": "new", "tokens": 0}]
    assert problems_of(tmp_path, wf_dict("w1", steps=[]), d) == [
        (1, "steps", "a workflow needs at least one step"),
        (2, "steps[0].prompt", "a prompt needs at least one token"),
    ]
