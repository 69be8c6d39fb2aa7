"""Request tags: which workflow and agent a vLLM request belongs to.

The orchestrator (or ``pbkv replay``) sets them in ``SamplingParams.extra_args["pbkv"]``::

    SamplingParams(max_tokens=..., extra_args={"pbkv": {"workflow_id": "w1",
                                                        "agent": "Coder",
                                                        "tenant": "default"}})

``extra_args`` reach the scheduler untouched and do not enter vLLM's prefix-cache hashes, so a
tagged request shares cached blocks with untagged ones. A request without tags (or with
malformed ones) is anonymous: it is cached and evicted by plain LRU like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TAG_KEY = "pbkv"


@dataclass(frozen=True, slots=True)
class RequestTags:
    workflow_id: str | None = None
    agent: str | None = None
    tenant: str | None = None


ANONYMOUS = RequestTags()


def make_extra_args(workflow_id: str, agent: str, tenant: str = "default") -> dict[str, Any]:
    return {TAG_KEY: {"workflow_id": workflow_id, "agent": agent, "tenant": tenant}}


def tags_of(request: Any) -> RequestTags:
    """The tags of a vLLM ``Request`` (anonymous when absent or malformed)."""
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    raw = extra.get(TAG_KEY) if isinstance(extra, dict) else None
    if not isinstance(raw, dict):
        return ANONYMOUS

    def text(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and value else None

    return RequestTags(text("workflow_id"), text("agent"), text("tenant"))
