"""Through the service: the outcomes its step RPCs judge feed the manager's online
recalibration, and the forecast it serves (what the conservative gate reads) carries the
calibrated top P(next) and confidence, not the predictor's raw ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ScriptedPredictor

from pbkv.predictor.recalibration import OnlineRecalibrator
from pbkv.service.client import PbkvClient
from pbkv.service.config import ServiceConfig
from pbkv.service.server_thread import ServerThread


def test_the_served_forecast_is_the_recalibrated_one(tmp_path: Path) -> None:
    cfg = ServiceConfig(
        port=0, http_port=None, store_path=tmp_path / "s.sqlite3", watch_model_s=None
    )
    horizon = cfg.manager.horizon
    raw = ({"A": (0.8,) * horizon + (1.0,), "B": (0.2,) * horizon + (2.0,)}, 0.8)
    predictor = ScriptedPredictor(horizon)
    for i in range(6):
        predictor.script[(f"acme/w{i}", 1)] = raw  # after the first step, A is forecast at 0.8
    # the default map, fed the same outcomes as the service judges them: after i outcomes
    # the served forecast of w{i} is expected.calibrated("app", 0.8)
    expected = OnlineRecalibrator(cfg.manager.recalibration)

    with ServerThread(cfg) as srv, PbkvClient(srv.target, tenant="acme", timeout_s=10) as client:
        srv.run(lambda: srv.server.servicer.manager.set_predictor(predictor))
        for i, nxt in enumerate("ABABA" + "A"):
            client.start_workflow(f"w{i}", "app")
            client.step_started(f"w{i}", "A")
            client.step_finished(f"w{i}", "A", step_index=0)
            served = client.forecast(f"w{i}")
            calibrated = expected.calibrated("app", 0.8)
            assert served is not None and served.confidence == pytest.approx(calibrated)
            p_next = {a.agent: a.p_within[0] for a in served.agents}
            assert p_next == pytest.approx({"A": calibrated, "B": 1.0 - calibrated})
            client.step_started(f"w{i}", nxt)  # judges the forecast made after step 0
            client.end_workflow(f"w{i}")
            expected.observe("app", 0.8, nxt == "A")
    # the last one (A right 3 times in 5) is well below the predictor's 0.8: what was served
    # is not the raw forecast
    assert calibrated < 0.75
