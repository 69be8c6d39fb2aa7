from pbkv.trace import Segment, Step, Workflow
from pbkv.training.materialize import prompt_token_ids, stream_tokens


def _wf(wid: str, history: int) -> Workflow:
    step = Step(
        "coder",
        (Segment("system:coder", 1500), Segment("history:main", history), Segment("new", 10)),
        output_tokens=5,
    )
    return Workflow(wid, "app", (step,))


def test_stream_prefix_is_stable_across_lengths():
    long = stream_tokens("k", 3000, 32000)
    assert stream_tokens("k", 1025, 32000) == long[:1025]
    assert stream_tokens("k", 7, 32000) == long[:7]
    assert stream_tokens("other", 7, 32000) != long[:7]


def test_prompts_share_exactly_the_common_segments():
    a = prompt_token_ids(_wf("w1", 100), 0, 32000)
    b = prompt_token_ids(_wf("w1", 300), 0, 32000)
    c = prompt_token_ids(_wf("w2", 100), 0, 32000)
    assert len(a) == 1610 and len(b) == 1810
    assert a[:1600] == b[:1600]  # same system prompt, same history prefix
    assert a[1600:] != b[1600:1610]  # the new tokens differ
    assert a[:1500] == c[:1500]  # system prompt shared across workflows of the app
    assert a[1500:1600] != c[1500:1600]  # histories are per workflow
