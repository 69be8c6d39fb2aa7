"""Writing trace files: round trips (also of random valid workflows), byte-identical gzip,
and a written file validated on reload (``trace_io/writer.py``)."""

from __future__ import annotations

import pytest
from trace_lines import wf_dict, write_lines  # same folder (pytest prepend mode)

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.trace_io import load_workflows, validate_file, write_workflows


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


def test_written_workflow_is_validated_on_reload(tmp_path):
    wf = Workflow("w", "app", (Step("a", (Segment("system:b", 5),), 1),))
    path = tmp_path / "w.jsonl"
    write_workflows(path, [wf])
    assert [p.field for p in validate_file(path)] == ["steps[0].prompt[0].id"]


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
