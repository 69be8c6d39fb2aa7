"""The LangGraph integration end to end: a real LangGraph graph (examples/langgraph_coder_loop.py)
calls a real vLLM OpenAI server through ``PbkvChatOpenAI`` and reports to a real ``pbkv serve``.

Checked per run: the request bodies the openai SDK put on the wire (an httpx event hook on the
client, which observes and changes nothing) carry the tags of the node that made them; vLLM
accepted each (HTTP 200); pbkv's trace store holds the workflow's start, every step in order
with its agent, text and timing, and the end. With pbkv killed mid-run the graph makes the
same calls."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langgraph_support import kill, make_chat_model, pbkv_serve, vllm_serve
from support import REPO

from pbkv.engine_adapter.integrations.langgraph import PbkvChatOpenAI, PbkvLangGraph
from pbkv.engine_adapter.integrations.openai_body import pbkv_xargs
from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter
from pbkv.service.stores.sqlite_store import SqliteStore

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "langgraph_coder_loop.py"
AGENTS = ["planner", "coder", "reviewer", "coder", "reviewer"]  # max_rounds=2, never approved
MAX_TOKENS = 6


def _example():
    spec = importlib.util.spec_from_file_location("langgraph_coder_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # LangGraph reads the state's type hints from it
    spec.loader.exec_module(module)
    return module


coder_loop = _example()


def free_port(first: int = 8120, last: int = 8139) -> int:
    for port in range(first, last + 1):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {first}-{last}")


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory, vllm_available) -> str:
    folder = tmp_path_factory.mktemp("vllm")
    model = make_chat_model(folder / "tiny")
    with vllm_serve(model, free_port(), folder / "vllm.log") as url:
        yield url


class Wire:
    """What the openai SDK sent and got back, seen through httpx's event hooks."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.statuses: list[int] = []

    def on_request(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.content))

    def on_response(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)

    async def aon_request(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def aon_response(self, response: httpx.Response) -> None:
        self.on_response(response)

    def model(self, base_url: str) -> PbkvChatOpenAI:
        hooks = {"request": [self.on_request], "response": [self.on_response]}
        ahooks = {"request": [self.aon_request], "response": [self.aon_response]}
        return PbkvChatOpenAI(
            base_url=base_url,
            api_key="unused",
            model="tiny",
            max_tokens=MAX_TOKENS,
            http_client=httpx.Client(event_hooks=hooks),
            http_async_client=httpx.AsyncClient(event_hooks=ahooks),
        )


def stored(path) -> dict[str, list]:
    """Each workflow's recorded events, in order."""
    store = SqliteStore(path)
    try:
        out: dict[str, list] = {}
        for rec in store.events():
            out.setdefault(rec.workflow_id, []).append(rec.event)
        return out
    finally:
        store.close()


def kinds_of(events: list) -> list[tuple[str, str | None]]:
    return [(e.KIND, getattr(e, "agent", None)) for e in events]


FULL_RUN = [
    ("start", None),
    *[(kind, a) for a in AGENTS for kind in ("step_started", "step_finished")],
    ("end", None),
]


def check_reported(events: list, final: dict) -> None:
    assert kinds_of(events) == FULL_RUN
    assert (events[0].app, events[0].task) == ("coder-loop", "snake")
    finished = [e for e in events if e.KIND == "step_finished"]
    # The last texts each agent reported are the ones the graph's state kept.
    last = {e.agent: e.output_text for e in finished}
    assert (last["planner"], last["coder"], last["reviewer"]) == (
        final["plan"],
        final["code"],
        final["review"],
    )
    for prev, step in zip(finished, finished[1:], strict=False):
        assert prev.start_s <= prev.end_s <= step.start_s <= step.end_s  # one call at a time
    assert all(0 < e.output_tokens <= MAX_TOKENS and e.input_tokens > 0 for e in finished)


@dataclass
class Setup:
    wire: Wire
    graph: Any
    pbkv: PbkvLangGraph
    reporter: WorkflowReporter
    pbkv_proc: subprocess.Popen


@contextlib.contextmanager
def coder_loop_setup(tmp_path, vllm_url: str) -> Iterator[Setup]:
    """The example graph (2 rounds) on vLLM, reporting to a fresh ``pbkv serve``."""
    wire = Wire()
    graph = coder_loop.build_graph(wire.model(vllm_url), max_rounds=2)
    with (
        pbkv_serve(tmp_path / "t.sqlite3") as (proc, target),
        WorkflowReporter(ReporterConfig(target=target)) as reporter,
    ):
        yield Setup(wire, graph, PbkvLangGraph(reporter, app="coder-loop"), reporter, proc)


def test_a_graph_run_is_reported_and_every_request_tagged(tmp_path, vllm_url) -> None:
    with coder_loop_setup(tmp_path, vllm_url) as run:
        state = coder_loop.initial_state("a snake game")
        final = run.graph.invoke(state, run.pbkv.config("wf-1", task="snake"))
        assert run.reporter.flush(timeout_s=30)
        stats = run.reporter.stats()
    assert final["agents"] == AGENTS
    assert [b["vllm_xargs"] for b in run.wire.bodies] == [pbkv_xargs("wf-1", a) for a in AGENTS]
    assert run.wire.statuses == [200] * len(AGENTS)
    assert (stats.sent, stats.failed, stats.dropped_full + stats.dropped_down) == (12, 0, 0)
    check_reported(stored(tmp_path / "t.sqlite3")["wf-1"], final)


def test_concurrent_async_runs_keep_their_own_tags_and_steps(tmp_path, vllm_url) -> None:
    with coder_loop_setup(tmp_path, vllm_url) as run:

        async def both():
            return await asyncio.gather(
                *[
                    run.graph.ainvoke(
                        coder_loop.initial_state("a snake game"), run.pbkv.config(w, task="snake")
                    )
                    for w in ("wf-a", "wf-b")
                ]
            )

        finals = asyncio.run(both())
        assert run.reporter.flush(timeout_s=30)
    bodies = run.wire.bodies
    assert len(bodies) == run.wire.statuses.count(200) == 2 * len(AGENTS)
    events = stored(tmp_path / "t.sqlite3")
    assert sorted(events) == ["wf-a", "wf-b"]
    for wid, final in zip(("wf-a", "wf-b"), finals, strict=True):
        assert final["agents"] == AGENTS
        mine = [b["vllm_xargs"] for b in bodies if b["vllm_xargs"]["pbkv_workflow_id"] == wid]
        assert mine == [pbkv_xargs(wid, a) for a in AGENTS]
        check_reported(events[wid], final)


def test_a_run_without_a_workflow_id_is_neither_tagged_nor_reported(tmp_path, vllm_url) -> None:
    with coder_loop_setup(tmp_path, vllm_url) as run:
        # The handler is attached, but neither pbkv_workflow_id nor thread_id names a workflow.
        config = {"callbacks": [run.pbkv.handler]}
        final = run.graph.invoke(coder_loop.initial_state("a snake game"), config)
        assert run.reporter.flush(timeout_s=30)
        stats = run.reporter.stats()
    assert final["agents"] == AGENTS
    assert [("vllm_xargs" in b) for b in run.wire.bodies] == [False] * len(AGENTS)
    assert run.wire.statuses == [200] * len(AGENTS)
    assert stats.queued == 0 and stored(tmp_path / "t.sqlite3") == {}


def test_a_failed_llm_call_ends_its_step_and_the_workflow(tmp_path, vllm_url) -> None:
    wire = Wire()
    # vLLM refuses the request (400): more tokens than the model's context holds.
    graph = coder_loop.build_graph(wire.model(vllm_url).bind(max_tokens=100_000), max_rounds=1)
    with (
        pbkv_serve(tmp_path / "t.sqlite3") as (_, target),
        WorkflowReporter(ReporterConfig(target=target)) as reporter,
    ):
        config = PbkvLangGraph(reporter, app="coder-loop").config("wf-e", task="snake")
        with pytest.raises(openai.BadRequestError):
            graph.invoke(coder_loop.initial_state("a snake game"), config)
        assert reporter.flush(timeout_s=30)
    assert wire.statuses == [400]
    assert wire.bodies[0]["vllm_xargs"] == pbkv_xargs("wf-e", "planner")
    events = stored(tmp_path / "t.sqlite3")["wf-e"]
    assert kinds_of(events) == FULL_RUN[:3] + [("end", None)]
    assert events[2].output_text == "" and events[2].start_s <= events[2].end_s


class KillAfterFirstCall(BaseCallbackHandler):
    """Kills pbkv (SIGKILL) when the graph's first LLM call ends."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.done = proc, False

    def on_llm_end(self, response, **kwargs) -> None:
        if not self.done:
            self.done = True
            kill(self.proc)


def test_pbkv_killed_mid_run_the_graph_makes_the_same_calls(tmp_path, vllm_url) -> None:
    with coder_loop_setup(tmp_path, vllm_url) as run:
        killer = KillAfterFirstCall(run.pbkv_proc)
        config = run.pbkv.config("wf-k", task="snake", base={"callbacks": [killer]})
        final = run.graph.invoke(coder_loop.initial_state("a snake game"), config)
        assert run.pbkv_proc.poll() is not None  # pbkv really died mid-run
        assert run.reporter.flush(timeout_s=60)
        stats = run.reporter.stats()
    assert final["agents"] == AGENTS
    assert [b["vllm_xargs"] for b in run.wire.bodies] == [pbkv_xargs("wf-k", a) for a in AGENTS]
    assert run.wire.statuses == [200] * len(AGENTS)
    # Every event was queued; what reached pbkv before it died is a prefix of the run, cut
    # before the planner's StepFinished (the killer runs before pbkv's handler); on a loaded
    # machine the sender may not even have sent the start by then.
    assert stats.queued == 12 and stats.sent + stats.failed + stats.dropped_down == 12
    assert stats.failed >= 1
    kinds = kinds_of(stored(tmp_path / "t.sqlite3").get("wf-k", []))
    assert kinds == FULL_RUN[: len(kinds)] and len(kinds) <= 2


def test_the_example_runs_against_vllm_and_pbkv(tmp_path, vllm_url) -> None:
    with pbkv_serve(tmp_path / "t.sqlite3") as (_, target):
        run = subprocess.run(
            [sys.executable, str(EXAMPLE), "--pbkv", target, "--base-url", vllm_url]
            + ["--workflows", "2", "--max-rounds", "2", "--max-tokens", "4"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(";")[0] for line in lines[:2]] == [
        f"coder-loop-{i}: {' '.join(AGENTS)}" for i in range(2)
    ]
    assert lines[2] == "pbkv reporter: sent 24, failed 0, dropped 0"
    assert sorted(stored(tmp_path / "t.sqlite3")) == ["coder-loop-0", "coder-loop-1"]


def test_the_docs_snippet_runs(tmp_path, vllm_url) -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Orchestrator frameworks", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    with pbkv_serve(tmp_path / "t.sqlite3") as (_, target):
        code = snippet.replace("http://127.0.0.1:8000/v1", vllm_url)
        code = code.replace("127.0.0.1:50151", target)
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
    assert run.returncode == 0, run.stderr
    events = stored(tmp_path / "t.sqlite3")["run-1"]
    assert kinds_of(events) == [
        ("start", None),
        ("step_started", "planner"),
        ("step_finished", "planner"),
        ("end", None),
    ]
    assert events[0].app == "planner-only"


def test_the_graph_on_vllm_with_the_connector_attached_to_the_same_pbkv(
    tmp_path, vllm_available
) -> None:
    """The whole deployment path: LangGraph -> vLLM's OpenAI server with the pbkv connector
    attached to ``pbkv serve``, which also takes the graph's workflow events. The engine's
    block lookups arrive tagged with the graph's workflow and agents."""
    from pbkv.engine_adapter.vllm.connector import ConnectorConfig
    from pbkv.service.client import PbkvClient

    model = make_chat_model(tmp_path / "tiny")
    with pbkv_serve(tmp_path / "t.sqlite3") as (_, target):
        connector = ConnectorConfig(engine_id="vllm-lg", link="service", service_target=target)
        with (
            vllm_serve(model, free_port(), tmp_path / "vllm.log", connector) as url,
            WorkflowReporter(ReporterConfig(target=target)) as reporter,
            PbkvClient(target, timeout_s=10) as client,
        ):
            wire = Wire()
            graph = coder_loop.build_graph(wire.model(url), max_rounds=2)
            pbkv = PbkvLangGraph(reporter, app="coder-loop")
            final = graph.invoke(
                coder_loop.initial_state("a snake game"), pbkv.config("wf-c", task="snake")
            )
            assert reporter.flush(timeout_s=30)
            deadline = time.monotonic() + 60  # the connector reports a step after the fact
            stats = client.stats()
            while time.monotonic() < deadline and not set(AGENTS) <= set(stats["hits_by_agent"]):
                time.sleep(0.5)
                stats = client.stats()
    assert final["agents"] == AGENTS
    assert wire.statuses == [200] * len(AGENTS)
    assert "vllm-lg" in stats["engines"]
    for agent in set(AGENTS):  # each agent's requests were looked up under its own name
        assert stats["hits_by_agent"][agent]["gpu_lookups"] > 0, stats["hits_by_agent"]
    assert stats["hits_by_app"]["coder-loop"]["gpu_lookups"] > 0  # joined to the workflow
    check_reported(stored(tmp_path / "t.sqlite3")["wf-c"], final)
