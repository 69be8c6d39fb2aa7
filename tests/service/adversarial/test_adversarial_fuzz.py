"""Hypothesis-generated protobuf messages and raw random bytes against every RPC (unary and
streaming), oversize and deeply nested messages. Throughout: the server stays up, health
answers within 100 ms, no call ends UNKNOWN/INTERNAL (every failure is a status naming what
is wrong), no traceback is logged, and what was acknowledged before is intact."""

from __future__ import annotations

import grpc
import pytest
from adversarial_support import HealthProbe, assert_acked_intact
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_pb

from pbkv.v1 import pbkv_pb2 as pb

BAD = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# ReloadModel included: it never reads a path outside the configured model directory (the
# server here has none: FAILED_PRECONDITION without touching the filesystem).
# The OTLP TraceService too (the attacked server runs with --otlp).
METHODS = [
    (f"/{s.full_name}/{m.name}", m)
    for s in (
        *pb.DESCRIPTOR.services_by_name.values(),
        otlp_pb.DESCRIPTOR.services_by_name["TraceService"],
    )
    for m in s.methods
]
NASTY = st.sampled_from(
    [
        "",
        "a\x00b",
        "\x7f",
        "\x85",
        "evil\u202egpj",
        "/",
        "../x",
        "a" * 300,
        "\ud7ff" * 70,
        "default/w",
        "acked",
    ]
)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _scalar(f) -> st.SearchStrategy:
    match f.type:
        case F.TYPE_STRING:
            return NASTY | st.text(max_size=20)
        case F.TYPE_BYTES:
            return st.binary(max_size=40) | st.just(b"h" * 200)
        case F.TYPE_DOUBLE | F.TYPE_FLOAT:
            return st.floats(allow_nan=True, allow_infinity=True)
        case F.TYPE_UINT32:
            return st.integers(0, 2**32 - 1)
        case F.TYPE_UINT64 | F.TYPE_FIXED64:  # OTLP's times are fixed64
            return st.integers(0, 2**64 - 1)
        case F.TYPE_FIXED32:
            return st.integers(0, 2**32 - 1)
        case F.TYPE_INT64 | F.TYPE_SINT64 | F.TYPE_SFIXED64:
            return st.integers(-(2**63), 2**63 - 1)
        case F.TYPE_BOOL:
            return st.booleans()
        case F.TYPE_ENUM:
            return st.integers(-3, 5)
        case _:
            return st.integers(-(2**31), 2**31 - 1)


@st.composite
def messages(draw, descriptor, depth: int = 3):
    """A message of ``descriptor`` with a random subset of its fields set to nasty values."""
    msg = pb.__dict__[descriptor.name]() if descriptor.name in pb.__dict__ else None
    if msg is None:
        from google.protobuf import message_factory

        msg = message_factory.GetMessageClass(descriptor)()
    for f in descriptor.fields:
        if not draw(st.booleans()):
            continue
        repeated = f.is_repeated
        if f.type == F.TYPE_MESSAGE:
            if depth <= 0:
                continue
            count = draw(st.integers(0, 3)) if repeated else 1
            for _ in range(count):
                item = draw(messages(f.message_type, depth - 1))
                if repeated:
                    getattr(msg, f.name).add().CopyFrom(item)
                else:
                    getattr(msg, f.name).CopyFrom(item)
        elif repeated:
            getattr(msg, f.name).extend(draw(st.lists(_scalar(f), max_size=4)))
        else:
            setattr(msg, f.name, draw(_scalar(f)))
    return msg


def call(channel: grpc.Channel, path: str, method, payloads: list[bytes]) -> grpc.StatusCode:
    """Send serialized ``payloads`` (one for a unary request) and read everything back."""
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    rpc = kinds[(method.client_streaming, method.server_streaming)](path)
    request = iter(payloads) if method.client_streaming else payloads[0]
    try:
        if method.server_streaming:
            for _ in rpc(request, timeout=5.0):
                pass
        else:
            rpc(request, timeout=5.0)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def probe(served):
    with HealthProbe(served) as p:
        yield p


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[p for p, _ in METHODS])
def test_generated_messages(served, channel, probe, path: str, method) -> None:
    @SETTINGS
    @given(st.lists(messages(method.input_type), min_size=1, max_size=4))
    def run(msgs) -> None:
        code = call(channel, path, method, [m.SerializeToString() for m in msgs])
        assert code not in BAD, (path, code, msgs)

    run()
    assert served.alive()
    probe.check()


@pytest.mark.parametrize(("path", "method"), METHODS, ids=[p for p, _ in METHODS])
def test_random_bytes(served, channel, probe, path: str, method) -> None:
    @SETTINGS
    @given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
    def run(payloads) -> None:
        code = call(channel, path, method, payloads)
        assert code not in BAD, (path, code, payloads)

    run()
    assert served.alive()
    probe.check()


def test_oversize_and_deeply_nested_messages(served, channel, probe) -> None:
    session = (
        "/pbkv.v1.Orchestrator/Session",
        pb.DESCRIPTOR.services_by_name["Orchestrator"].methods_by_name["Session"],
    )
    start = (
        "/pbkv.v1.Orchestrator/StartWorkflow",
        pb.DESCRIPTOR.services_by_name["Orchestrator"].methods_by_name["StartWorkflow"],
    )
    # over the 8 MiB receive limit
    huge = pb.StartWorkflowRequest(workflow_id="w", app="a", task="t" * (9 << 20))
    assert call(channel, *start, [huge.SerializeToString()]) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # 50,000 nested groups of an unknown field: past protobuf's recursion limit
    nested = b"\x7b" * 50_000 + b"\x7c" * 50_000
    for path, method in (start, session):
        assert call(channel, path, method, [nested]) == grpc.StatusCode.INVALID_ARGUMENT
    # the largest batch allowed, of events that each fail: answered, nothing stalls
    batch = pb.SessionRequest(
        events=[
            pb.SessionEvent(
                id=i, step_started=pb.StepStartedRequest(workflow_id=f"nope-{i}", agent="a")
            )
            for i in range(1024)
        ]
    ).SerializeToString()
    assert call(channel, *session, [batch] * 20) == grpc.StatusCode.OK
    over = pb.SessionRequest(events=[pb.SessionEvent(id=1)] * 1025).SerializeToString()
    assert call(channel, *session, [over]) == grpc.StatusCode.INVALID_ARGUMENT
    assert served.alive()
    probe.check()


def test_after_the_attacks(served, probe) -> None:
    """Last in this module: acknowledged work intact, no traceback logged, RSS bounded."""
    assert served.alive()
    probe.check()
    assert_acked_intact(served)
    log = served.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert served.rss_mb() < 2 * served.idle_rss_mb
