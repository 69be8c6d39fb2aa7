from types import SimpleNamespace

from pbkv.engine_adapter.vllm.tags import ANONYMOUS, RequestTags, make_extra_args, tags_of


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
