"""Who&When importers (Magentic-One, CaptainAgent) on the real logs in ../shared/datasets
(counts checked by hand with grep / python one-liners, noted beside each assertion) and on a
small hand-written run."""

from __future__ import annotations

import json
from collections import Counter

from import_checks import agent_counts, assert_valid_trace, record_skips  # same folder

from pbkv.trace import Segment
from pbkv.training.importers import import_source
from pbkv.training.importers.content import text_segments
from pbkv.training.importers.who_when import role_words
from pbkv.training.tokens import approx_tokens


def test_magentic_real_logs(datasets_dir, tmp_path):
    result = import_source("who-when-magentic", datasets_dir / "who_and_when" / "Hand-Crafted")
    # ls | wc -l: 40 files; 1903 history records, 40 of them role "human"
    assert (result.files_read, len(result.workflows), result.records_read) == (40, 40, 1903)
    assert result.steps == 1863
    assert dict(result.skipped) == {"record: human request (kept as task + shared history)": 40}
    assert result.records_read == result.steps + record_skips(result)
    # role counts: Orchestrator (thought) 992, (-> WebSurfer) 399, (-> FileSurfer) 20,
    # (termination condition) 18, (-> Assistant) 15, (-> ComputerTerminal) 2 = 1446
    assert agent_counts(result) == {
        "Orchestrator": 1446,
        "WebSurfer": 381,
        "FileSurfer": 19,
        "Assistant": 15,
        "ComputerTerminal": 2,
    }
    targets = Counter(
        s.meta.get("target")
        for w in result.workflows
        for s in w.steps
        if s.meta["kind"] == "instruction"
    )
    assert targets == {"WebSurfer": 399, "FileSurfer": 20, "Assistant": 15, "ComputerTerminal": 2}
    first = result.workflows[0]
    assert first.workflow_id == "magentic-one-1" and first.app == "magentic-one"
    assert first.task.startswith("Where can I take martial arts classes")
    assert first.meta["mistake_agent"] == "WebSurfer"
    # 1.json: 29 records = human + 28 steps; record 3 is "Orchestrator (-> WebSurfer)"
    assert len(first.steps) == 28
    assert [s.meta["kind"] for s in first.steps[:4]] == ["plan", "ledger", "instruction", "reply"]
    assert first.steps[2].agent == "Orchestrator" and first.steps[2].meta["target"] == "WebSurfer"
    assert_valid_trace(tmp_path, result)


def test_magentic_roles_never_leak_the_target_and_history_grows_by_broadcasts(tmp_path):
    run = {
        "question": "q?",
        "history": [
            {"role": "human", "content": "find the answer"},  # 3 tokens
            {"role": "Orchestrator (thought)", "content": "Initial plan: look"},
            {"role": "Orchestrator (-> WebSurfer)", "content": "search it now"},  # broadcast
            {"role": "Orchestrator (thought)", "content": "Next speaker WebSurfer"},
            {"role": "WebSurfer", "content": "found it"},  # broadcast
            {"role": "Orchestrator (termination condition)", "content": "done"},
        ],
    }
    (tmp_path / "7.json").write_text(json.dumps(run))
    result = import_source("who-when-magentic", tmp_path / "7.json")
    steps = result.workflows[0].steps
    assert [s.agent for s in steps] == ["Orchestrator"] * 3 + ["WebSurfer", "Orchestrator"]
    assert [s.meta["kind"] for s in steps] == [
        "plan",
        "instruction",
        "next-speaker",
        "reply",
        "termination-condition",
    ]
    assert [s.meta.get("target") for s in steps] == [None, "WebSurfer", "WebSurfer", None, None]
    assert [s.meta["llm_call"] for s in steps] == [True, False, False, True, False]
    task, instr, reply = (
        approx_tokens(t) for t in ("find the answer", "search it now", "found it")
    )
    assert [dict((g.id, g.tokens) for g in s.prompt)["history:chat"] for s in steps] == [
        task,
        task,
        task + instr,
        task + instr,
        task + instr + reply,
    ]
    assert steps[0].prompt[0] == Segment("system:Orchestrator", 300)
    assert steps[0].prompt[-1] == Segment("history:ledger-prompt", 450)  # the ledger prompt


def test_captain_real_logs(datasets_dir, tmp_path):
    result = import_source(
        "who-when-captain", datasets_dir / "who_and_when" / "Algorithm-Generated"
    )
    # 90 files, 777 history records, every one has a name; Computer_terminal speaks 211 times
    assert (result.files_read, len(result.workflows), result.steps) == (90, 90, 777)
    assert not result.skipped
    agents = agent_counts(result)
    assert agents["Computer_terminal"] == 211
    assert sum(agents.values()) == 777
    assert set(agents) == {"Computer_terminal", "expert_1", "expert_2", "expert_3"}
    # 1.json speakers: Excel_Expert, Computer_terminal, BusinessLogic_Expert,
    # Computer_terminal, DataVerification_Expert, DataVerification_Expert
    first = result.workflows[0]
    assert first.workflow_id == "captain-agent-1"
    assert list(first.agents) == [
        "expert_1",
        "Computer_terminal",
        "expert_2",
        "Computer_terminal",
        "expert_3",
        "expert_3",
    ]
    assert first.meta["team"] == {
        "expert_1": "Excel_Expert",
        "expert_2": "BusinessLogic_Expert",
        "expert_3": "DataVerification_Expert",
    }
    assert first.steps[2].meta["role_words"] == "business logic"
    assert first.steps[2].input_text == "[business logic]"
    # each expert's own system prompt leads its prompts as content-addressed, app-scoped
    # segments whose tokens are its text's
    system = [g for g in first.steps[4].prompt if g.kind == "preamble"]
    assert system == text_segments(first.meta["system_messages"]["expert_3"], "preamble")
    assert sum(g.tokens for g in system) == approx_tokens(first.meta["system_messages"]["expert_3"])
    # 22.json and 51.json hold the same history under different tasks: both kept, marked
    copies = {
        w.workflow_id: w.meta["same_history_as"]
        for w in result.workflows
        if "same_history_as" in w.meta
    }
    assert copies == {"captain-agent-51": "22.json"}
    # the same expert, same text; the chat grown by the expert's own reply
    assert first.steps[5].prompt[: len(system)] == tuple(system)
    assert first.steps[5].prompt[-1].tokens == (
        first.steps[4].prompt[-1].tokens + first.steps[4].output_tokens
    )
    assert_valid_trace(tmp_path, result)


def test_role_words():
    assert role_words("DataVerification_Expert") == "data verification"
    assert role_words("Federico_Lauria_Expert") == "federico lauria"
    assert role_words("API_Expert") == "api"
