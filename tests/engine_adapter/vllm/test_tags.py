from types import SimpleNamespace

import pytest

from pbkv.engine_adapter.vllm.tags import (
    ANONYMOUS,
    RequestTags,
    flat_extra_args,
    make_extra_args,
    openai_extra_body,
    tags_of,
)


def _request(extra_args):
    from vllm import SamplingParams

    return SimpleNamespace(sampling_params=SamplingParams(extra_args=extra_args))


def test_tags_round_trip_through_sampling_params(vllm_available):
    req = _request(make_extra_args("w1", "Coder", "t1"))
    assert tags_of(req) == RequestTags("w1", "Coder", "t1")


def test_missing_or_malformed_tags_are_anonymous(vllm_available):
    assert tags_of(_request(None)) == ANONYMOUS
    assert tags_of(_request({"pbkv": "w1"})) == ANONYMOUS
    assert tags_of(_request({"pbkv": {"workflow_id": 3, "agent": ""}})) == ANONYMOUS
    assert tags_of(SimpleNamespace()) == ANONYMOUS
    assert tags_of(_request({"pbkv_workflow_id": 7, "pbkv_agent": ["Coder"]})) == ANONYMOUS


def test_flat_tags_are_what_the_openai_server_passes_on(vllm_available):
    body = openai_extra_body("w1", "Coder", "t1")
    assert body == {
        "vllm_xargs": {"pbkv_workflow_id": "w1", "pbkv_agent": "Coder", "pbkv_tenant": "t1"}
    }
    # vllm serve: the request body's vllm_xargs become SamplingParams.extra_args as they are
    assert tags_of(_request(dict(body["vllm_xargs"]))) == RequestTags("w1", "Coder", "t1")
    assert tags_of(_request({"pbkv_workflow_id": "w1", "session_id": "s"})) == RequestTags("w1")
    assert flat_extra_args("w1", "Coder") == {
        "pbkv_workflow_id": "w1",
        "pbkv_agent": "Coder",
        "pbkv_tenant": "default",
    }


def test_flat_tags_pass_vllm_servers_request_validation(vllm_available):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    body = {"model": "m", "prompt": [1, 2, 3], **openai_extra_body("w1", "Coder")}
    params = CompletionRequest(**body).to_sampling_params(4, {})
    assert tags_of(SimpleNamespace(sampling_params=params)) == RequestTags("w1", "Coder", "default")
    nested = {"model": "m", "prompt": [1, 2, 3], "vllm_xargs": make_extra_args("w1", "Coder")}
    with pytest.raises(ValueError, match="vllm_xargs"):
        CompletionRequest(**nested)  # why the flat form exists


def test_the_nested_form_wins_over_the_flat_one(vllm_available):
    extra = {**make_extra_args("w1", "Coder"), **flat_extra_args("w2", "Tester")}
    assert tags_of(_request(extra)) == RequestTags("w1", "Coder", "default")


def test_flat_tags_refuse_empty_or_non_string_values():
    with pytest.raises(ValueError, match="'agent' must be a non-empty string"):
        openai_extra_body("w1", "")
    with pytest.raises(ValueError, match="'workflow_id' must be a non-empty string, got 3"):
        flat_extra_args(3, "Coder")
