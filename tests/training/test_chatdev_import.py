"""ChatDev importer on the real logs in ../shared/datasets (counts checked by hand with grep /
python one-liners, noted beside each assertion) and on a small hand-written log."""

from __future__ import annotations

from collections import Counter

import pytest
from import_checks import agent_counts, assert_valid_trace, record_skips  # same folder

from pbkv.training.importers import ImportOptions, import_source
from pbkv.training.importers.chatdev import import_chatdev, prompt_texts
from pbkv.training.importers.content import text_segments
from pbkv.training.tokens import approx_tokens


@pytest.fixture(scope="module")
def chatdev_result(datasets_dir):
    return import_source("chatdev", datasets_dir / "chatdev_openbmb")


def test_chatdev_real_logs(chatdev_result, tmp_path):
    result = chatdev_result
    # 183 .log files; 136 hold agent turns (128 "**A<->B on : Phase, turn n**", 8 the 2023
    # "[n] AI Assistant (Role):"); comparing their texts with CRLF, blank and DEBUG lines
    # removed leaves 102 distinct logs, two of which differ only in a doubled task_prompt
    # header line: 101 distinct runs, 35 second copies
    assert (result.files_read, len(result.workflows)) == (183, 101)
    assert Counter(w.meta["log_format"] for w in result.workflows) == {"later": 97, "2023": 4}
    assert dict(result.skipped) == {
        "file: ChatDev log without any agent reply (run stopped early)": 30,
        "file: empty log": 1,
        "file: not a ChatDev run (appmap start-up line only)": 2,
        "file: not a ChatDev run (experience co-learning graph log)": 5,
        "file: not a ChatDev run (graph-reasoning / MCTS tool log)": 9,
        "file: second copy of a run already imported (identical replies)": 35,
        "record: memory-retrieval note (no LLM call)": 11,  # grep -c "thinking back"
        "usage: embedding call of the experience memory": 8,
        "usage: LLM call with no logged reply": 3,
    }
    assert sum(result.skipped[r] for r in result.skipped if r.startswith("file:")) == 82
    # grep over the 101 kept files: 1883 marker turns + 68 old-format turns + 14
    # "Prompt Engineer:" replies
    assert result.steps == 1965
    assert result.records_read == result.steps + record_skips(result)
    # 1915 usage records in the kept files (grep): 1905 matched to replies, 8 embedding
    # calls, 2 left over; the 3rd left-over is in a file stopped before any reply
    assert sum(w.meta["usage_matched"] for w in result.workflows) == 1905
    agents = agent_counts(result)
    # grep: Programmer 869 marker turns + 32 old-format turns; Code Reviewer 517 + 17
    assert (agents["Programmer"], agents["Code Reviewer"]) == (901, 534)
    ids = [w.workflow_id for w in result.workflows]
    assert len(set(ids)) == len(ids)
    assert_valid_trace(tmp_path, result)


def test_chatdev_second_copies_are_recognised(datasets_dir, tmp_path):
    # the same run twice: one log with DEBUG lines, one without (AgentTech, June 2023)
    folder = datasets_dir / "chatdev_openbmb"
    for name in (
        "a71b0cbfd0da30671d39e4af56a7e07a3eece6bb.log",
        "d72d1c4541796905adcbdd171212ca7beb2f39d3.log",
    ):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    result = import_chatdev(tmp_path, ImportOptions())
    (wf,) = result.workflows
    assert wf.meta["source"].startswith("a71b0")
    assert result.skipped == {"file: second copy of a run already imported (identical replies)": 1}
    assert wf.task.startswith("Develop a gomoku game that conforms to basic gomoku rules")
    # no PhaseType lines in these logs: each "terminated the chat" ends a chat. Log lines
    # 11, 21, 39: single replies each followed by "terminated the chat"; then Programmer
    # (line 49), Chief Human Resource Officer [0] (235), Chief Executive Officer as user
    # [0] (247) in one chat
    assert [s.meta["chat"] for s in wf.steps[:6]] == [1, 2, 3, 4, 4, 4]
    # this early log prints no system messages: a stand-in (background + role + task)
    assert all(s.meta["system_source"] == "fallback" for s in wf.steps[:6])
    # steps 0 and 1 (the CPO, alone in two chats) send the very same prompt: same segments
    assert wf.steps[1].prompt == wf.steps[0].prompt
    assert [s.agent for s in wf.steps[3:6]] == [
        "Programmer",
        "Chief Human Resource Officer",
        "Chief Executive Officer",
    ]


def test_chatdev_later_format_file_with_real_token_counts(datasets_dir):
    path = datasets_dir / "chatdev_openbmb" / "035b2bf253b00364a1e9da4bc60b76a8222a5182.log"
    wf = import_chatdev(path, ImportOptions()).workflows[0]
    # 47 turn markers + 1 "Prompt Engineer:" reply; 48 usage records, all matched
    assert len(wf.steps) == 48 and wf.meta["usage_matched"] == 48
    assert wf.task.startswith("Create a pixel art creator app.")
    cpo, ceo = wf.steps[1], wf.steps[2]
    # usage records 2 and 3: prompt_tokens 579 / completion 57, then 677 / 67; the prompt is
    # the rebuilt text (system message + phase chat), its approximate count within 2% of real
    assert (cpo.agent, cpo.phase, cpo.meta["prompt_tokens"], cpo.output_tokens) == (
        "Chief Product Officer",
        "DemandAnalysis",
        579,
        57,
    )
    assert (ceo.agent, ceo.phase, ceo.meta["prompt_tokens"], ceo.output_tokens) == (
        "Chief Executive Officer",
        "DemandAnalysis",
        677,
        67,
    )
    assert (cpo.input_tokens, ceo.input_tokens) == (569, 671)
    texts = prompt_texts(wf)
    assert [approx_tokens(t) for t in texts] == [s.input_tokens for s in wf.steps]
    assert texts[1].startswith("ChatDev is a software company")
    assert "You are Chief Product Officer." in texts[1]
    assert "Here is a new customer's task: create a pixel art creator app" in texts[1]
    assert texts[1].endswith('e.g., "<INFO> PowerPoint".')  # the phase's opening prompt
    assert texts[2].endswith("\n" + cpo.output_text)  # ... and the CPO's reply
    # the role's words before the task are app-scoped, the rest (task, chat) the run's
    kinds = [g.kind for g in cpo.prompt]
    assert kinds[0] == "preamble" and set(kinds) == {"preamble", "history"}
    # both prompts hold the phase chat with the same segments: the opening prompt, then (the
    # CEO's) the CPO's reply
    opening = text_segments(cpo.meta["context"][0])
    reply = text_segments(cpo.output_text)
    assert cpo.prompt[-len(opening) :] == tuple(opening)
    assert ceo.prompt[-len(opening) - len(reply) :] == tuple(opening + reply)
    # two calls of one role share its system message, task included: the Programmer in
    # Coding (step 4) and in CodeReviewModification (step 7) lead with the same segments
    programmer = [s for s in wf.steps if s.agent == "Programmer"]
    system = wf.meta["system_messages"][programmer[0].meta["system"]]
    first, second = programmer[0].prompt, programmer[1].prompt
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert sum(g.tokens for g in first[:common]) == approx_tokens(system)
    assert [g.kind for g in first[:common]][-1] == "history"  # the task: this run's content
    # a review re-run on unchanged code sends the very same prompt (steps 13 and 17)
    assert wf.steps[17].prompt == wf.steps[13].prompt
    assert (wf.steps[13].agent, wf.steps[13].phase) == ("Code Reviewer", "CodeReviewComment")
    assert cpo.output_text.startswith("I think the pixel art creator app would be best")
    assert cpo.start_s == 42.0  # 07:24:23 - 07:23:41


def test_chatdev_2023_format_file(datasets_dir):
    path = datasets_dir / "chatdev_openbmb" / "0556577bf9f13e3dc6a50d2e4f5463faf6998168.log"
    wf = import_chatdev(path, ImportOptions()).workflows[0]
    # 18 "[n] AI Assistant/User (Role):" turns, 18 "[OpenAI_Usage_Info]" records
    assert len(wf.steps) == 18 and wf.meta["log_format"] == "2023"
    assert wf.task == "Design a basic Gomoku game."
    first = wf.steps[0]
    assert (first.agent, first.phase, first.meta["prompt_tokens"], first.output_tokens) == (
        "Chief Product Officer",
        "DemandAnalysis",
        445,
        14,
    )
    assert first.input_tokens == 430  # the rebuilt text (its system message is in the log)
    assert "system_source" not in first.meta
    assert [s.agent for s in wf.steps[:4]] == [
        "Chief Product Officer",
        "Chief Executive Officer",
        "Chief Technology Officer",
        "Chief Executive Officer",
    ]


def test_chatdev_small_log_pairs_usage_in_order_and_counts_leftovers(tmp_path):
    log = "\n".join(
        [
            "[2024-25-01 10:00:00 INFO] **[Preprocessing]**",
            "**task_prompt**: Make a clock.",
            "[2024-25-01 10:00:01 INFO] System: **[RolePlaying]**",
            "| **assistant_role_name** | Programmer |",
            "| **user_role_name** | Chief Technology Officer |",
            "[2024-25-01 10:00:02 INFO] Chief Technology Officer: **[Start Chat]**",
            "",
            "[You are a programmer.]",
            "",
            "Write the clock.",
            "[2024-25-01 10:00:03 INFO] **[OpenAI_Usage_Info Receive]**",
            "prompt_tokens: 400",
            "completion_tokens: 30",
            "total_tokens: 430",
            "[2024-25-01 10:00:04 INFO] **[OpenAI_Usage_Info Receive]**",
            "prompt_tokens: 450",
            "completion_tokens: 5",
            "total_tokens: 455",
            "[2024-25-01 10:00:05 INFO] Programmer: **Programmer<->Chief Technology Officer on : "
            "Coding, turn 0**",
            "",
            "[You are a programmer.]",
            "",
            "Here is main.py",
            "[2024-25-01 10:00:06 INFO] System: **[RolePlaying]**",
            "| **assistant_role_name** | Code Reviewer |",
            "",
        ]
    )
    (tmp_path / "a.log").write_text(log)
    result = import_chatdev(tmp_path, ImportOptions())
    (wf,) = result.workflows
    (step,) = wf.steps
    assert (step.agent, step.phase, step.meta["prompt_tokens"], step.output_tokens) == (
        "Programmer",
        "Coding",
        400,
        30,
    )  # the first usage record is the first reply's
    assert step.output_text == "Here is main.py"  # the bracketed system message is cut
    # the system message (from the opening's bracket; no task in it) and the opening prompt
    assert step.prompt == tuple(
        text_segments("You are a programmer.") + text_segments("Write the clock.")
    )
    assert step.start_s == 5.0
    assert dict(result.skipped) == {"usage: LLM call with no logged reply": 1}


def test_chatdev_ids_are_whole_file_stems(datasets_dir, tmp_path):
    # two runs whose names share their first 12 characters (the old id prefix)
    src = datasets_dir / "chatdev_openbmb" / "035b2bf253b00364a1e9da4bc60b76a8222a5182.log"
    other = datasets_dir / "chatdev_openbmb" / "0556577bf9f13e3dc6a50d2e4f5463faf6998168.log"
    (tmp_path / "chatdev_mast_run_A.log").write_bytes(src.read_bytes())
    (tmp_path / "chatdev_mast_run_B.log").write_bytes(other.read_bytes())
    result = import_source("chatdev", tmp_path)
    assert [w.workflow_id for w in result.workflows] == [
        "chatdev-chatdev_mast_run_A",
        "chatdev-chatdev_mast_run_B",
    ]
    assert result.summary().splitlines()[0] == (
        "2 files, 66 agent records -> 2 workflows, 66 steps"
    )


def test_token_approximation_matches_real_chatdev_counts(chatdev_result):
    """The calibration stated in pbkv/training/tokens.py, re-measured: replies whose real
    completion_tokens the logs give."""
    pairs = [
        (approx_tokens(s.output_text or ""), s.output_tokens)
        for w in chatdev_result.workflows
        for s in w.steps
        if s.meta["token_source"] == "usage"
    ]
    assert len(pairs) == 1905
    ratio = sum(a for a, _ in pairs) / sum(r for _, r in pairs)
    assert 0.95 <= ratio <= 1.15, ratio
