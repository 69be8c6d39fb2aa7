"""Checks that span the lines of one trace file: duplicate ids, app-scoped content lengths
(``trace_io/file_checks.py``)."""

from __future__ import annotations

from trace_lines import problems_of, wf_dict  # same folder (pytest prepend mode)


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
