"""LangGraph (LangChain) integration: report a graph run to pbkv and tag its LLM calls.

    from langgraph.graph import StateGraph
    from pbkv.engine_adapter.integrations.langgraph import PbkvChatOpenAI, PbkvLangGraph
    from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter

    reporter = WorkflowReporter(ReporterConfig(target="127.0.0.1:50151"))
    pbkv = PbkvLangGraph(reporter, app="coder-loop")
    llm = PbkvChatOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-", model="tiny")
    graph = builder.compile()                     # nodes call llm.invoke(...)
    graph.invoke(state, pbkv.config("run-1"))     # one invocation = one pbkv workflow

One invocation of the graph is one workflow; each chat-model call inside a node is one step
of the agent named after the node (``langgraph_node``), with the model's output text, the
call's start/end time and token counts. ``pbkv.config()`` puts the workflow id (and tenant,
task) in the run's ``metadata``, which LangChain hands to every callback and to every nested
runnable; without it the graph's ``thread_id`` serves as the workflow id. Reporting goes
through ``WorkflowReporter`` (a bounded queue and a background sender), so the graph never
waits on pbkv.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables.config import RunnableConfig, var_child_runnable_config
from langchain_openai import ChatOpenAI

from pbkv.engine_adapter.integrations.openai_body import (
    AGENT_KEY,
    DEFAULT_TENANT,
    TENANT_KEY,
    WORKFLOW_KEY,
    pbkv_xargs,
    with_pbkv_xargs,
)
from pbkv.engine_adapter.integrations.reporter import WorkflowReporter

NODE_KEY = "langgraph_node"  # LangGraph's metadata key for the running node
TASK_KEY = "pbkv_task"
MAX_OPEN_RUNS = 4_096  # graph runs and LLM calls tracked at once; the oldest are forgotten


def workflow_of(metadata: dict[str, Any] | None) -> str | None:
    """The pbkv workflow id a run's metadata names: ``pbkv_workflow_id``, else ``thread_id``."""
    if not metadata:
        return None
    wid = metadata.get(WORKFLOW_KEY) or metadata.get("thread_id")
    return str(wid) if wid else None


def xargs_of(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    """The ``vllm_xargs`` tags for an LLM call made with this metadata (None outside a
    LangGraph node or without a workflow id)."""
    wid = workflow_of(metadata)
    agent = metadata.get(NODE_KEY) if wid else None
    if not agent:
        return None
    return pbkv_xargs(wid, str(agent), str(metadata.get(TENANT_KEY) or DEFAULT_TENANT))


def current_xargs() -> dict[str, str] | None:
    """``xargs_of`` the runnable config in effect here (LangChain's context variable)."""
    config = var_child_runnable_config.get()
    return xargs_of(config.get("metadata")) if config else None


class PbkvChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` whose requests carry pbkv's tags in ``vllm_xargs`` when called inside a
    LangGraph node of a run that has a workflow id (``PbkvLangGraph.config``); elsewhere its
    requests are exactly ``ChatOpenAI``'s."""

    def _get_request_payload(self, input_: Any, *, stop=None, **kwargs: Any) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        xargs = current_xargs()
        if xargs is not None:
            payload["extra_body"] = with_pbkv_xargs(payload.get("extra_body"), xargs)
        return payload


def _text_and_usage(response: Any) -> tuple[str, int, int]:
    """The first generation's text and token counts (0: not reported) of an ``LLMResult``."""
    gen = response.generations[0][0] if response.generations and response.generations[0] else None
    if gen is None:
        return "", 0, 0
    usage = getattr(getattr(gen, "message", None), "usage_metadata", None) or {}
    return gen.text or "", usage.get("input_tokens") or 0, usage.get("output_tokens") or 0


class PbkvCallbackHandler(BaseCallbackHandler):
    """LangChain callbacks -> ``WorkflowReporter``. Contract: the root chain run (the graph
    invocation) with a workflow id starts the workflow and ends it when it ends or fails;
    every chat-model call inside a node is StepStarted at its start and StepFinished (output
    text, start/end time, tokens; an empty text when the call failed) at its end. Runs
    without a workflow id or outside a node are ignored. It only enqueues, inline on the
    caller's thread (parallel sync nodes call it from several threads: its tables are locked),
    and keeps at most ``max_open_runs`` open runs of each kind."""

    run_inline = True  # enqueueing is cheap; no executor hop in async graphs
    raise_error = False

    def __init__(
        self, reporter: WorkflowReporter, app: str, *, clock=time.time, max_open_runs=MAX_OPEN_RUNS
    ) -> None:
        self.reporter, self.app, self.clock = reporter, app, clock
        self.max_open_runs = max_open_runs
        self._lock = threading.Lock()
        self._roots: collections.OrderedDict[uuid.UUID, str] = collections.OrderedDict()
        self._calls: collections.OrderedDict[uuid.UUID, tuple[str, str, float]] = (
            collections.OrderedDict()
        )

    def _remember(self, table: collections.OrderedDict, run_id: uuid.UUID, value: Any) -> None:
        with self._lock:
            table[run_id] = value
            if len(table) > self.max_open_runs:
                table.popitem(last=False)

    def _forget(self, table: collections.OrderedDict, run_id: uuid.UUID) -> Any:
        with self._lock:
            return table.pop(run_id, None)

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        if parent_run_id is not None:
            return
        metadata = kwargs.get("metadata")
        wid = workflow_of(metadata)
        if wid is None:
            return
        self._remember(self._roots, run_id, wid)
        task = str(metadata.get(TASK_KEY) or "")
        self.reporter.start_workflow(wid, self.app, task=task, now_s=self.clock())

    def on_chain_end(self, outputs, *, run_id, parent_run_id=None, **kwargs):
        wid = self._forget(self._roots, run_id) if parent_run_id is None else None
        if wid is not None:
            self.reporter.end_workflow(wid, now_s=self.clock())

    def on_chain_error(self, error, *, run_id, parent_run_id=None, **kwargs):
        self.on_chain_end(None, run_id=run_id, parent_run_id=parent_run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs):
        xargs = xargs_of(kwargs.get("metadata"))
        if xargs is None:
            return
        wid, agent, now = xargs[WORKFLOW_KEY], xargs[AGENT_KEY], self.clock()
        self._remember(self._calls, run_id, (wid, agent, now))
        self.reporter.step_started(wid, agent, now_s=now)

    def on_llm_end(self, response, *, run_id, **kwargs):
        call = self._forget(self._calls, run_id)
        if call is None:
            return
        wid, agent, start_s = call
        text, input_tokens, output_tokens = _text_and_usage(response)
        self.reporter.step_finished(
            wid,
            agent,
            output_text=text,
            start_s=start_s,
            end_s=self.clock(),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def on_llm_error(self, error, *, run_id, **kwargs):
        call = self._forget(self._calls, run_id)
        if call is not None:
            wid, agent, start_s = call
            self.reporter.step_finished(
                wid, agent, output_text="", start_s=start_s, end_s=self.clock()
            )


class PbkvLangGraph:
    """The one object a LangGraph app holds: ``config()`` for each graph invocation."""

    def __init__(self, reporter: WorkflowReporter, app: str) -> None:
        self.reporter = reporter
        self.tenant = reporter.config.tenant or DEFAULT_TENANT  # pbkv's and the tags' alike
        self.handler = PbkvCallbackHandler(reporter, app)

    def config(
        self, workflow_id: str | None = None, *, task: str = "", base: RunnableConfig | None = None
    ) -> RunnableConfig:
        """A run config (``base`` merged in: its callbacks and metadata kept) naming the
        workflow (a fresh id when None) and adding the handler."""
        base = dict(base or {})
        callbacks = base.get("callbacks") or []
        if not isinstance(callbacks, list):
            raise TypeError("config(base=...) takes callbacks as a list of handlers")
        metadata = {
            **(base.get("metadata") or {}),
            WORKFLOW_KEY: workflow_id or uuid.uuid4().hex,
            TENANT_KEY: self.tenant,
            TASK_KEY: task,
        }
        return {**base, "callbacks": [*callbacks, self.handler], "metadata": metadata}
