"""The in-process Session replay: every event answered, the same answers in any batching,
and the replies are those the plain (memo-free) forecast conversion gives, byte for byte."""

from __future__ import annotations

import pytest

from pbkv.bench import session_replay
from pbkv.service.convert import ForecastWriter, fill_forecast_pb


class _PlainWriter(ForecastWriter):
    """``fill_forecast_pb`` itself: the reference the memoised writer must equal."""

    def fill(self, msg, f) -> None:
        fill_forecast_pb(msg, f)


def test_replay_answers_every_event_and_equals_the_plain_conversion(monkeypatch) -> None:
    got = session_replay.replay(batch=8, workflows=60, steps=4, concurrency=30)
    assert (got["events"], got["failed"]) == (60 * (2 + 2 * 4), 0)
    assert got["serving_thread_us_per_event"] > 0
    again = session_replay.replay(batch=3, workflows=60, steps=4, concurrency=30)
    # The digest covers the results in order, not how they were split into replies: the
    # answers do not depend on the batching.
    assert again["replies_sha256"] == got["replies_sha256"]
    monkeypatch.setattr("pbkv.service.servicers.orchestrator.ForecastWriter", _PlainWriter)
    plain = session_replay.replay(batch=8, workflows=60, steps=4, concurrency=30)
    assert plain["replies_sha256"] == got["replies_sha256"]


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        session_replay.replay(batch=0)
