"""pbkv's request tags in an OpenAI-compatible request body, as vLLM's server takes them.

vLLM's OpenAI server copies the body's ``vllm_xargs`` into ``SamplingParams.extra_args``,
and accepts only flat values there (a string, a number or a list of them; a nested object
is a 400), so the tags travel as three flat keys::

    {"model": ..., "messages": [...],
     "vllm_xargs": {"pbkv_workflow_id": "run-1", "pbkv_agent": "coder", "pbkv_tenant": "default"}}

With the ``openai`` SDK (or anything built on it) they go in ``extra_body``.
"""

from __future__ import annotations

from typing import Any

XARGS = "vllm_xargs"
WORKFLOW_KEY, AGENT_KEY, TENANT_KEY = "pbkv_workflow_id", "pbkv_agent", "pbkv_tenant"
DEFAULT_TENANT = "default"


def pbkv_xargs(workflow_id: str, agent: str, tenant: str = DEFAULT_TENANT) -> dict[str, str]:
    return {WORKFLOW_KEY: workflow_id, AGENT_KEY: agent, TENANT_KEY: tenant}


def with_pbkv_xargs(extra_body: dict[str, Any] | None, xargs: dict[str, str]) -> dict[str, Any]:
    """``extra_body`` (not modified) with ``xargs`` added to its ``vllm_xargs`` (the caller's
    own ``vllm_xargs`` keys are kept; pbkv's keys win)."""
    body = dict(extra_body or {})
    body[XARGS] = {**(body.get(XARGS) or {}), **xargs}
    return body
