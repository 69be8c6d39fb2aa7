"""Round trips between the boundary dataclasses and their protobuf messages."""

from __future__ import annotations

import pytest

from pbkv.cache_manager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    CachePlan,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.predictor.forecast import AgentForecast, Forecast
from pbkv.service.convert import (
    ConversionError,
    event_from_pb,
    event_to_pb,
    forecast_from_pb,
    forecast_to_pb,
    plan_from_pb,
    plan_to_pb,
)
from pbkv.v1 import pbkv_pb2 as pb

EVENTS = [
    BlockStored("e", (b"a", b"b"), None, 16, Tier.GPU),
    BlockStored("e", (b"c",), b"b", 16, Tier.CPU),
    BlockRemoved("e", (b"a",), Tier.CPU),
    AllBlocksCleared("e", None),
    AllBlocksCleared("e", Tier.GPU),
    RequestStarted("e", "r", (b"a", b"b"), 40, 1, 1, "w", "coder", "t1", 2.5),
    RequestStarted("e", "r2", (), 3),
    RequestFinished("e", "r", 7, 3.0),
    RequestFinished("e", "r2"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_engine_events_round_trip(event) -> None:
    wire = pb.EngineEvent.FromString(event_to_pb(event).SerializeToString())
    assert event_from_pb(wire, "e") == event


def test_bad_events_name_the_field() -> None:
    bad_hits = pb.EngineEvent(
        request_started=pb.RequestStarted(request_id="r", block_hashes=[b"a"], num_gpu_hit_blocks=2)
    )
    with pytest.raises(ConversionError, match=r"events\[3\]\.request_started\.num_gpu_hit"):
        event_from_pb(bad_hits, "e", 3)
    with pytest.raises(ConversionError, match=r"events\[0\]: no event kind"):
        event_from_pb(pb.EngineEvent(), "e")
    with pytest.raises(ConversionError, match="tier"):
        event_from_pb(pb.EngineEvent(block_removed=pb.BlockRemoved(block_hashes=[b"a"])), "e")


def test_plan_and_forecast_round_trip() -> None:
    plan = CachePlan("e", 9, (b"x", b"y"), (b"k1",), (b"p",), 1.5, True)
    assert plan_from_pb(pb.CachePlan.FromString(plan_to_pb(plan).SerializeToString())) == plan
    fc = Forecast(
        "w",
        3,
        2,
        (AgentForecast("a", (0.5, 0.75), 1.5), AgentForecast("b", (0.0, 0.25), None)),
        0.8,
        "v1",
    )
    assert forecast_from_pb(forecast_to_pb(fc)) == fc


def test_the_forecast_writer_writes_what_fill_forecast_pb_writes_for_shared_agents() -> None:
    """Forecasts of several workflows sharing agents tuples (as a caching predictor gives
    them), a tuple seen again after the writer forgot everything, and ``eta_steps`` set and
    unset: each message equals ``fill_forecast_pb``'s, byte for byte."""
    from pbkv.service.convert import ForecastWriter, fill_forecast_pb

    first = (AgentForecast("a", (0.5, 0.75), 1.5), AgentForecast("b", (0.0, 0.25), None))
    second = (AgentForecast("c", (1.0, 1.0), 0.0),)
    writer = ForecastWriter(max_entries=1)
    steps = [("w1", first), ("w2", first), ("w3", second), ("w4", first), ("w5", ())]
    for n, (wid, agents) in enumerate(steps):
        fc = Forecast(wid, n, 2, agents, 0.25 * (n % 4), f"v{n}")
        got, want = pb.Forecast(), pb.Forecast()
        writer.fill(got, fc)
        fill_forecast_pb(want, fc)
        assert got.SerializeToString() == want.SerializeToString()
        assert forecast_from_pb(got) == fc
    assert len(writer._agents) == 1  # max_entries: the tuples before the last forgotten
