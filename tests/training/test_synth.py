import argparse
import math
import statistics
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbkv.trace import Workflow, step_groups
from pbkv.training.synth import (
    DECODE_S_PER_TOKEN,
    PREFILL_S_PER_TOKEN,
    ROUND_GAP_S,
    STEP_OVERHEAD_S,
    config_dict,
    make_config,
    synthesize,
)
from pbkv.training.synth_apps import DYNAMIC_APPS
from pbkv.training.synth_cli import add_arguments, run


def _conditional_entropy(pairs: list[tuple[object, str]]) -> float:
    """H(next | context) in bits, from empirical counts."""
    joint = Counter(pairs)
    context = Counter(c for c, _ in pairs)
    n = len(pairs)
    return -sum(k / n * math.log2(k / context[c]) for (c, _), k in joint.items())


# Words a reader of the live context would notice; chosen here, independent of the generator's
# internals beyond the texts it writes.
CUE_WORDS = (
    "refund",
    "invoice",
    "charge",
    "crash",
    "error",
    "install",
    "delivery",
    "package",
    "tracking",
    "password",
    "login",
    "profile",
    "urgent",
    "follow-up",
    "approved",
    "passed",
    "document",
    "search",
    "calculator",
    "python",
    "final",
    "cite",
    "gap",
)


def _transitions(workflows: list[Workflow]) -> tuple[list, list]:
    """(prev agent -> next) and ((prev agent, text cue) -> next) pairs, end of workflow
    included as a next 'agent'."""
    history_only, with_text = [], []
    for wf in workflows:
        agents = [*wf.agents, "<end>"]
        for i, step in enumerate(wf.steps):
            text = f"{wf.task} {step.output_text or ''}".lower()
            cue = frozenset(w for w in CUE_WORDS if w in text)
            history_only.append(((wf.app, agents[i]), agents[i + 1]))
            with_text.append(((wf.app, agents[i], cue), agents[i + 1]))
    return history_only, with_text


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_deterministic_for_a_seed_and_prefix_stable(kind):
    a = synthesize(kind, 3, 40)
    assert a == synthesize(kind, 3, 40)
    assert [w.meta for w in a] == [w.meta for w in synthesize(kind, 3, 40)]
    assert synthesize(kind, 3, 15) == a[:15]  # a bigger run extends a smaller one
    assert synthesize(kind, 4, 40) != a


def test_static_apps_repeat_one_fixed_sequence():
    wfs = synthesize("static", 1, 300, num_apps=3)
    by_app: dict[str, set] = defaultdict(set)
    sizes: dict[tuple[str, str], set] = defaultdict(set)
    for wf in wfs:
        by_app[wf.app].add(wf.agents)
        for step in wf.steps:
            system = step.prompt[0]
            assert system.id == f"system:{step.agent}"
            sizes[(wf.app, step.agent)].add(system.tokens)
    assert sorted(by_app) == ["pipeline0", "pipeline1", "pipeline2"]
    assert all(len(seqs) == 1 for seqs in by_app.values())  # same sequence every workflow
    assert all(4 <= len(next(iter(seqs))) <= 8 for seqs in by_app.values())
    assert all(len(s) == 1 for s in sizes.values())  # fixed system prompt per agent
    assert all(1000 <= next(iter(s)) <= 8000 for s in sizes.values())


def test_static_closed_loop_keeps_concurrency_workflows_running():
    wfs = synthesize("static", 2, 200, concurrency=16)
    assert all(wf.meta["concurrency"] == 16 and wf.meta["arrival"] == "closed" for wf in wfs)
    assert [wf.arrival_s for wf in wfs[:16]] == [0.0] * 16
    events = sorted([(wf.arrival_s, 1) for wf in wfs] + [(wf.steps[-1].end_s, -1) for wf in wfs])
    running, peak = 0, 0
    for _, delta in events:  # at equal times an end (-1) sorts before a start (+1)
        running += delta
        peak = max(peak, running)
    assert peak == 16


def test_dynamic_has_all_apps_fanout_and_loops():
    wfs = synthesize("dynamic", 5, 400)
    assert {wf.app for wf in wfs} == set(DYNAMIC_APPS)
    group_sizes = Counter(len(g) for wf in wfs for g in step_groups(wf))
    assert set(group_sizes) <= {1, 2, 3, 4} and group_sizes[2] > 0 and group_sizes[3] > 0
    reviews = [wf.agents.count("reviewer") for wf in wfs if wf.app == "codegen"]
    assert max(reviews) >= 3 and min(reviews) == 1  # the review loop repeats
    for wf in wfs:  # every review round ends in the reviewer's verdict in the text
        for step in wf.steps:
            if step.agent == "reviewer":
                assert step.output_text.startswith("review: ")


def test_segments_history_and_times_follow_the_documented_model():
    wfs = synthesize("dynamic", 6, 60, history_growth=0.5)
    for wf in wfs:
        history = 0
        now = wf.arrival_s
        for group in step_groups(wf):
            contribution = 0
            round_end = now
            for i in group:
                step = wf.steps[i]
                ids = [s.id for s in step.prompt]
                expected = [f"system:{step.agent}", f"preamble:{wf.app}"]
                if history:
                    expected.append("history:main")
                    assert step.prompt[2].tokens == history
                assert ids == [*expected, "new"]
                assert step.start_s == pytest.approx(now, abs=1e-5)
                duration = (
                    STEP_OVERHEAD_S
                    + PREFILL_S_PER_TOKEN * step.input_tokens
                    + DECODE_S_PER_TOKEN * step.output_tokens
                )
                assert step.end_s - step.start_s == pytest.approx(duration, abs=1e-5)
                contribution += step.prompt[-1].tokens + step.output_tokens
                round_end = max(round_end, step.end_s)
            history += int(0.5 * contribution)
            now = round_end + ROUND_GAP_S


def test_live_text_predicts_the_next_agent_much_better_than_history():
    history_only, with_text = _transitions(synthesize("dynamic", 7, 3000))
    h_prev = _conditional_entropy(history_only)
    h_text = _conditional_entropy(with_text)
    # Seed 7 gives 0.92 and 0.31 bits; the bands catch a generator whose cues stop working.
    assert 0.75 < h_prev < 1.1
    assert 0.2 < h_text < 0.42
    assert h_text < 0.4 * h_prev


def _top1(train: list, test: list) -> float:
    """Accuracy of the most frequent next agent per context, learned on ``train``."""
    table: dict[object, Counter] = defaultdict(Counter)
    for context, nxt in train:
        table[context][nxt] += 1
    hits = sum(1 for c, n in test if table[c] and table[c].most_common(1)[0][0] == n)
    return hits / len(test)


def test_text_cues_raise_held_out_top1_over_a_markov_table():
    train_prev, train_text = _transitions(synthesize("dynamic", 0, 2000))
    test_prev, test_text = _transitions(synthesize("dynamic", 1, 2000))
    markov, with_text = _top1(train_prev, test_prev), _top1(train_text, test_text)
    # Seeds 0/1 give 0.679 and 0.856: text is worth ~18 points a history-only model cannot get.
    assert 0.62 < markov < 0.74
    assert 0.82 < with_text < 0.92
    assert with_text - markov > 0.12


def test_noise_free_review_verdict_determines_the_next_agent():
    wfs = synthesize("dynamic", 8, 500, noise=0.0, num_apps=2)  # support, codegen
    for wf in wfs:
        for step, nxt in zip(wf.steps, wf.steps[1:], strict=False):
            if step.agent == "reviewer":
                assert nxt.agent == ("tester" if "approved" in step.output_text else "coder")


def test_knobs_shape_the_prompts():
    wfs = synthesize(
        "dynamic",
        9,
        100,
        max_fanout=1,
        history_growth=0.0,
        preamble_tokens=0,
        system_tokens=(64, 64),
        new_tokens=(5, 5),
        output_tokens=(7, 9),
        num_tenants=3,
    )
    assert all(s.parallel_group is None for wf in wfs for s in wf.steps)
    assert {tuple(seg.id.split(":")[0] for seg in s.prompt) for wf in wfs for s in wf.steps} == {
        ("system", "new")
    }
    assert {s.prompt[0].tokens for wf in wfs for s in wf.steps} == {64}
    assert {s.output_tokens for wf in wfs for s in wf.steps} == {7, 8, 9}
    assert {wf.tenant for wf in wfs} == {"tenant0", "tenant1", "tenant2"}


def test_poisson_arrivals_have_the_requested_rate():
    wfs = synthesize("dynamic", 10, 2000, rate_per_s=5.0)
    arrivals = [wf.arrival_s for wf in wfs]
    assert arrivals == sorted(arrivals)
    assert wfs[0].meta == {"synth": "dynamic", "seed": 10, "arrival": "poisson", "rate_per_s": 5.0}
    assert 2000 / arrivals[-1] == pytest.approx(5.0, rel=0.06)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"bogus": 1}, "unknown synth knob(s) bogus; known: num_apps"),
        ({"system_tokens": (10, 5)}, "synth knob system_tokens=(10, 5)"),
        ({"max_fanout": 5}, "synth knob max_fanout=5: must be in 1..4"),
        ({"arrival": "burst"}, "synth knob arrival='burst': must be one of poisson, closed"),
        ({"num_apps": 5}, "synth knob num_apps=5: must be in 1..4"),
    ],
)
def test_bad_knobs_name_the_knob(knobs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        synthesize("dynamic", 0, 1, **knobs)


def test_bad_kind_is_rejected():
    with pytest.raises(ValueError, match="synth kind 'mixed': must be one of static, dynamic"):
        synthesize("mixed", 0, 1)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_a_trace_file_that_loads_back(tmp_path, capsys):
    out = tmp_path / "dyn.jsonl.gz"
    args = _cli(
        [
            "--kind",
            "dynamic",
            "--seed",
            "11",
            "--num-workflows",
            "30",
            "--out",
            str(out),
            "--system-tokens",
            "100",
            "200",
            "--noise",
            "0.1",
        ]
    )
    assert run(args) == 0
    expected = synthesize("dynamic", 11, 30, system_tokens=(100, 200), noise=0.1)
    steps = sum(len(w.steps) for w in expected)
    assert capsys.readouterr().out.startswith(f"wrote 30 workflows, {steps} steps to {out}")
    trace_io = pytest.importorskip("pbkv.training.trace_io")
    assert trace_io.validate_file(out) == []
    assert trace_io.load_workflows(out) == expected


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_both_families_pass_the_trace_validator(tmp_path, kind):
    trace_io = pytest.importorskip("pbkv.training.trace_io")
    path = tmp_path / f"{kind}.jsonl"
    workflows = synthesize(kind, 12, 300, max_fanout=3, num_apps=3, num_tenants=2)
    assert trace_io.write_workflows(path, workflows) == 300
    assert trace_io.validate_file(path) == []
    assert trace_io.load_workflows(path) == workflows


def test_zero_workflows_and_config_dict():
    assert synthesize("static", 0, 0) == []
    config = make_config("static", 5, 10, system_tokens=[2000, 2000])
    assert config.system_tokens == (2000, 2000)  # lists (from JSON) become ranges
    header = config_dict(config)
    assert header["kind"] == "static" and header["arrival"] == "closed"
    assert header["system_tokens"] == [2000, 2000] and header["concurrency"] == 64


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["static", "dynamic"]),
    seed=st.integers(0, 2**32),
    system_low=st.integers(1, 3000),
    growth=st.floats(0, 3),
    fanout=st.integers(1, 4),
    loops=st.integers(1, 6),
    noise=st.floats(0, 0.5),
    arrival=st.sampled_from(["poisson", "closed"]),
)
def test_any_valid_knobs_give_well_formed_workflows(
    kind, seed, system_low, growth, fanout, loops, noise, arrival
):
    wfs = synthesize(
        kind,
        seed,
        12,
        system_tokens=(system_low, system_low + 500),
        history_growth=growth,
        max_fanout=fanout,
        max_loops=loops,
        noise=noise,
        arrival=arrival,
        concurrency=3,
    )
    ids = [wf.workflow_id for wf in wfs]
    assert len(set(ids)) == 12
    for wf in wfs:
        assert wf.steps and wf.arrival_s >= 0
        starts = [s.start_s for s in wf.steps]
        assert starts == sorted(starts) and starts[0] == wf.arrival_s
        assert all(s.end_s > s.start_s for s in wf.steps)
        assert all(len(g) <= fanout for g in step_groups(wf))
        history = [
            s.prompt[i].tokens
            for s in wf.steps
            for i, seg in enumerate(s.prompt)
            if seg.id == "history:main"
        ]
        assert history == sorted(history)
        if kind == "dynamic":  # every loop stays within its bound
            assert wf.agents.count("reviewer") <= loops and wf.agents.count("critic") <= loops


def test_cli_bad_knob_is_a_user_error(tmp_path):
    from pbkv.cli import CliError

    out = tmp_path / "x.jsonl"
    args = _cli(["--kind", "dynamic", "--out", str(out), "--rate-per-s", "0"])
    with pytest.raises(CliError, match="synth knob rate_per_s=0.0: must be > 0"):
        run(args)
    assert not out.exists()


def test_pause_knob_only_moves_times():
    plain = synthesize("dynamic", 3, 6)
    paused = synthesize("dynamic", 3, 6, pause_s=(1, 30))
    assert [[s.prompt for s in w.steps] for w in plain] == [
        [s.prompt for s in w.steps] for w in paused
    ]
    for a, b in zip(plain, paused, strict=True):
        ga, gb = step_groups(a), step_groups(b)
        for k in range(1, len(ga)):
            gap_a = a.steps[ga[k][0]].start_s - max(a.steps[i].end_s for i in ga[k - 1])
            gap_b = b.steps[gb[k][0]].start_s - max(b.steps[i].end_s for i in gb[k - 1])
            assert gap_a == pytest.approx(ROUND_GAP_S, abs=2e-6)
            assert ROUND_GAP_S + 1 - 2e-6 <= gap_b <= ROUND_GAP_S + 30 + 2e-6
    with pytest.raises(ValueError, match="pause_s"):
        make_config("dynamic", 0, 1, pause_s=(5, 1))


def test_session_tasks_and_the_long_agent_preset():
    one = synthesize("dynamic", 0, 10)
    chained = synthesize("dynamic", 0, 10, session_tasks=3)
    assert sum(len(step_groups(w)) for w in chained) > 2 * sum(len(step_groups(w)) for w in one)
    long = synthesize("dynamic", 0, 10, preset="long-agent")
    rounds = [len(step_groups(w)) for w in long]
    last = [w.steps[-1].input_tokens for w in long]
    assert min(rounds) >= 15  # tens of turns
    assert 50_000 <= statistics.median(last) <= 150_000  # and long contexts
    assert make_config("dynamic", 0, 1, preset="long-agent", session_tasks=2).session_tasks == 2
    with pytest.raises(ValueError, match="unknown synth preset 'huge'"):
        make_config("dynamic", 0, 1, preset="huge")
