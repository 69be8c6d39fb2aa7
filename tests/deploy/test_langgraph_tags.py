"""The LangGraph integration's tags and run config, without a server: which metadata names
which workflow and agent, and the request body ``PbkvChatOpenAI`` builds inside a runnable."""

from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda

from pbkv.engine_adapter.integrations.langgraph import PbkvChatOpenAI, PbkvLangGraph, xargs_of
from pbkv.engine_adapter.integrations.openai_body import pbkv_xargs
from pbkv.engine_adapter.integrations.reporter import ReporterConfig, WorkflowReporter


@pytest.fixture
def reporter():
    r = WorkflowReporter(ReporterConfig(target="127.0.0.1:1", tenant="acme"))
    yield r
    r.close(timeout_s=0.1)


def test_the_tags_come_from_the_node_and_the_workflow_id_or_thread_id() -> None:
    node = {"langgraph_node": "coder"}
    assert xargs_of({**node, "pbkv_workflow_id": "w1", "thread_id": "t1"}) == pbkv_xargs(
        "w1", "coder"
    )
    assert xargs_of({**node, "thread_id": "t1", "pbkv_tenant": "acme"}) == pbkv_xargs(
        "t1", "coder", "acme"
    )
    assert xargs_of(node) is None  # no workflow id: untagged
    assert xargs_of({"pbkv_workflow_id": "w1"}) is None  # not inside a node
    assert xargs_of(None) is None


def test_config_merges_the_callers_config_and_names_the_workflow(reporter) -> None:
    pbkv = PbkvLangGraph(reporter, app="a")
    mine = object()
    config = pbkv.config(
        "w1", task="t", base={"callbacks": [mine], "metadata": {"user": 1}, "tags": ["x"]}
    )
    assert config == {
        "callbacks": [mine, pbkv.handler],
        "metadata": {"user": 1, "pbkv_workflow_id": "w1", "pbkv_tenant": "acme", "pbkv_task": "t"},
        "tags": ["x"],
    }
    fresh = pbkv.config()["metadata"]["pbkv_workflow_id"]
    assert len(fresh) == 32 and fresh != pbkv.config()["metadata"]["pbkv_workflow_id"]
    with pytest.raises(TypeError, match="callbacks as a list"):
        pbkv.config(base={"callbacks": object()})


def test_the_request_body_carries_the_tags_only_inside_a_tagged_node() -> None:
    llm = PbkvChatOpenAI(
        base_url="http://127.0.0.1:1/v1",
        api_key="unused",
        model="tiny",
        extra_body={"vllm_xargs": {"mine": 1}, "top_k": 5},
    )
    payload = RunnableLambda(lambda text: llm._get_request_payload(text))
    node = {"langgraph_node": "reviewer", "pbkv_workflow_id": "w1", "pbkv_tenant": "acme"}
    tagged = payload.invoke("hi", {"metadata": node})
    assert tagged["extra_body"] == {
        "vllm_xargs": {"mine": 1, **pbkv_xargs("w1", "reviewer", "acme")},
        "top_k": 5,
    }
    assert llm.extra_body == {"vllm_xargs": {"mine": 1}, "top_k": 5}  # not modified
    untagged = payload.invoke("hi", {"metadata": {"langgraph_node": "reviewer"}})
    assert untagged["extra_body"] == {"vllm_xargs": {"mine": 1}, "top_k": 5}
    assert "extra_body" not in PbkvChatOpenAI(
        base_url="http://127.0.0.1:1/v1", api_key="unused", model="tiny"
    )._get_request_payload("hi")
