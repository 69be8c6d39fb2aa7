"""``ThrottledLog``: the first failure is logged at once, then one line per interval that
counts what it left out (injected clock)."""

from __future__ import annotations

import logging

import pytest

from pbkv.throttled_log import ThrottledLog


def test_one_line_per_interval_counting_the_failures_left_out(caplog) -> None:
    now = [100.0]
    throttled = ThrottledLog(
        logging.getLogger("pbkv.test"), "pbkv predictor", interval_s=60.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="pbkv.test"):
        assert throttled.failed("forecast", ValueError("bad shape"))
        now[0] = 159.9
        assert not throttled.failed("forecast", ValueError("bad shape"))
        assert not throttled.failed("observe_finished", KeyError("w1"))
        now[0] = 160.0
        assert throttled.failed("forecast", "invalid forecast for 'w2'")
    assert [r.getMessage() for r in caplog.records] == [
        "pbkv predictor failed in forecast (ValueError: bad shape); failing open",
        "pbkv predictor failed in forecast (invalid forecast for 'w2'); failing open "
        "[2 more since]",
    ]
    assert throttled.num_failures == 4


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ThrottledLog(logging.getLogger("pbkv.test"), "x", interval_s=-1)
