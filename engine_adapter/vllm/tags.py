"""Request tags: which workflow and agent a vLLM request belongs to.

They travel in ``SamplingParams.extra_args``, in either of two forms:

* nested (in-process callers: ``pbkv replay``, ``LLM.generate``)::

      SamplingParams(max_tokens=..., extra_args={"pbkv": {"workflow_id": "w1",
                                                          "agent": "Coder",
                                                          "tenant": "default"}})

* flat (the OpenAI-compatible server, ``vllm serve``): the request body's ``vllm_xargs``
  becomes ``extra_args`` as it is, and vLLM 0.32 accepts only string or number values there
  (``dict[str, str | int | float | list[str | int | float]]``; a nested dict is a 400), so::

      {"vllm_xargs": {"pbkv_workflow_id": "w1", "pbkv_agent": "Coder", "pbkv_tenant": "default"}}

  ``openai_extra_body(workflow_id, agent, tenant)`` returns exactly that, for the ``openai``
  client's ``extra_body=`` argument.

When ``extra_args["pbkv"]`` is present it alone decides (the flat keys are then ignored).
``extra_args`` reach the scheduler untouched and do not enter vLLM's prefix-cache hashes, so a
tagged request shares cached blocks with untagged ones. A request without tags (or with
malformed ones: not a string, or empty) is anonymous: it is cached and evicted by plain LRU
like any other. This module does not import vLLM (clients use it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TAG_KEY = "pbkv"  # nested form: extra_args["pbkv"] = {field: value}
FLAT_PREFIX = "pbkv_"  # flat form: extra_args["pbkv_" + field] = value
FIELDS = ("workflow_id", "agent", "tenant")


@dataclass(frozen=True, slots=True)
class RequestTags:
    workflow_id: str | None = None
    agent: str | None = None
    tenant: str | None = None


ANONYMOUS = RequestTags()


def make_extra_args(workflow_id: str, agent: str, tenant: str = "default") -> dict[str, Any]:
    """``SamplingParams.extra_args`` in the nested form."""
    return {TAG_KEY: {"workflow_id": workflow_id, "agent": agent, "tenant": tenant}}


def flat_extra_args(workflow_id: str, agent: str, tenant: str = "default") -> dict[str, str]:
    """``extra_args`` in the flat form (what ``vllm_xargs`` may carry)."""
    values = (workflow_id, agent, tenant)
    for name, value in zip(FIELDS, values, strict=True):
        if not isinstance(value, str) or not value:
            raise ValueError(f"pbkv tag {name!r} must be a non-empty string, got {value!r}")
    return {FLAT_PREFIX + name: value for name, value in zip(FIELDS, values, strict=True)}


def openai_extra_body(workflow_id: str, agent: str, tenant: str = "default") -> dict[str, Any]:
    """The ``extra_body`` that tags an OpenAI-API request to ``vllm serve``::

    client.chat.completions.create(..., extra_body=openai_extra_body("w1", "Coder"))

    Merge it by hand if you send other ``vllm_xargs`` too."""
    return {"vllm_xargs": flat_extra_args(workflow_id, agent, tenant)}


def tags_of(request: Any) -> RequestTags:
    """The tags of a vLLM ``Request`` (anonymous when absent or malformed)."""
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    if not isinstance(extra, dict):
        return ANONYMOUS
    if TAG_KEY in extra:
        raw = extra[TAG_KEY]
        if not isinstance(raw, dict):
            return ANONYMOUS
        values = [raw.get(name) for name in FIELDS]
    else:
        values = [extra.get(FLAT_PREFIX + name) for name in FIELDS]
    workflow_id, agent, tenant = (v if isinstance(v, str) and v else None for v in values)
    return RequestTags(workflow_id, agent, tenant)
