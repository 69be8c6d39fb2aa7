"""Trace fidelity on real logs: an imported trace's segments keep the prompt sharing that the
rebuilt prompt texts have (perfect-prefix reuse share within 3 points), and the reuse measures
count what they say on small exact cases."""

from __future__ import annotations

import pytest

from pbkv.trace import Segment, Step, Workflow
from pbkv.training.importers import import_source, prompt_texts
from pbkv.training.importers.content import chunks, placeholder_text, text_segments
from pbkv.training.reuse import measure_reuse, text_token_runs, trace_token_runs
from pbkv.training.samples import sample_paths
from pbkv.training.stats import format_app_stats, trace_stats
from pbkv.training.tokens import approx_token_pieces, approx_tokens
from pbkv.training.trace_io import load_workflows

AGREE = 0.03  # the bound: text and trace shares within 3 percentage points


# ----------------------------------------------------------------------------- small cases


def test_pieces_are_the_counted_tokens_and_line_cuts_keep_them():
    text = "def f(x):\n    return x ** 2  # squares\n\ninternationalization 1234567 数据\n"
    assert len(approx_token_pieces(text)) == approx_tokens(text)
    assert "".join(chunks(text)) == text
    assert sum((approx_token_pieces(c) for c in chunks(text)), []) == approx_token_pieces(text)
    assert sum(g.tokens for g in text_segments(text)) == approx_tokens(text)
    assert approx_tokens(placeholder_text("system:Orchestrator", 300)) == 300
    assert placeholder_text("a", 5) != placeholder_text("b", 5)


def test_same_text_same_segments_wherever_it_appears():
    code = "".join(f"line {i} = compute({i})\n" for i in range(40))
    assert text_segments(code) == text_segments(code)
    # after other text the same lines are cut (and named) the same way again once a cut
    # line passes: most of the code's segments recur
    shifted = text_segments("a different header line\n" + code)
    plain = text_segments(code)
    assert len(set(plain) & set(shifted)) >= len(plain) - 2
    assert {g.kind for g in text_segments(code, "preamble")} == {"preamble"}


def test_measure_reuse_counts_prefix_and_moved_content_exactly():
    a = list(range(100, 164))  # 4 blocks of 16
    b = list(range(500, 532))  # 2 blocks
    # run 1: prompt a; then a + b (prefix hit 64); then b + a (no prefix hit; a and b recur
    # at another offset: 96 tokens past the prefix, all covered by earlier shingles)
    # run 2: a again (prefix 64 from run 1; nothing recurs *in this run* past it)
    reuse = measure_reuse([[a, a + b, b + a], [a + [7] * 16]], block_tokens=16, shingle_tokens=16)
    assert reuse.prompt_tokens == 64 + 96 + 96 + 80
    assert reuse.prefix_tokens == 64 + 64
    assert reuse.nonprefix_tokens == 96
    assert reuse.prefix_share == pytest.approx(128 / 336)


def test_traces_stats_reports_reuse_of_a_trace_when_asked():
    sys_a, sys_b, chat = (
        Segment("system:a", 64),
        Segment("system:b", 16),
        Segment("history:chat", 32),
    )
    wf = Workflow(
        "w1",
        "demo",
        (Step("a", (sys_a,), 1), Step("a", (sys_a, chat), 1), Step("b", (sys_b, chat), 1)),
    )
    (plain,) = trace_stats([wf])
    assert plain.prefix_reuse_share is None
    (stats,) = trace_stats([wf], reuse=True)
    # 208 prompt tokens; step 1 reuses system:a (64); step 2's chat (32) recurs at offset 16
    assert stats.prefix_reuse_share == pytest.approx(64 / 208)
    assert stats.nonprefix_reuse_share == pytest.approx(32 / 208)
    assert (
        "  prompt reuse: perfect prefix cache 30.8%, recurring past the prefix "
        "(non-prefix) 15.4% of prompt tokens"
    ) in format_app_stats(stats).splitlines()


# ----------------------------------------------------------------------------- real logs


def _shares(workflows) -> tuple[float, float, float, float]:
    texts = [prompt_texts(w) for w in workflows]
    for wf, run in zip(workflows, texts, strict=True):  # segments hold the text's tokens
        assert [s.input_tokens for s in wf.steps] == [max(1, approx_tokens(t)) for t in run]
    text = measure_reuse(text_token_runs(texts))
    trace = measure_reuse(trace_token_runs(workflows))
    return text.prefix_share, trace.prefix_share, text.nonprefix_share, trace.nonprefix_share


def _check(workflows) -> None:
    text, trace, _, _ = _shares(workflows)
    assert abs(text - trace) <= AGREE, (text, trace)
    assert trace > 0.2  # sharing the old importer lost (ChatDev: about 11%) is kept


def test_bundled_chatdev_trace_keeps_the_texts_prefix_sharing():
    _check(load_workflows(sample_paths()["chatdev"]))


def test_bundled_captain_agent_trace_keeps_the_texts_prefix_sharing():
    _check(load_workflows(sample_paths()["captain-agent"]))


@pytest.mark.slow
def test_bundled_magentic_one_trace_keeps_the_texts_prefix_sharing():
    _check(load_workflows(sample_paths()["magentic-one"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, sub",
    [("chatdev", "chatdev_openbmb"), ("who-when-captain", "who_and_when/Algorithm-Generated")],
)
def test_fresh_import_of_shared_datasets_keeps_the_texts_prefix_sharing(datasets_dir, fmt, sub):
    _check(import_source(fmt, datasets_dir / sub).workflows)
