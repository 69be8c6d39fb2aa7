"""The manager's call into its predictor: fail open, validated, recalibrated.

Contract: ``guarded_forecast`` never raises for the predictor's sake. A predictor that raises,
or returns something ``workflows.valid_forecast`` rejects, costs one ``predictor_errors``
count and a throttled log line, and yields None (the scorer then falls back to recency /
LRU); a valid forecast comes back through the online recalibration of its top P(next), which
the scorer's gate reads.
"""

from __future__ import annotations

from pbkv.cache_manager.workflows import valid_forecast
from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import Forecast, Predictor, WorkflowState
from pbkv.predictor.recalibration import OnlineRecalibrator
from pbkv.throttled_log import ThrottledLog


def guarded_forecast(
    predictor: Predictor | None,
    state: WorkflowState,
    horizon: int,
    recalibration: OnlineRecalibrator,
    counts: dict[str, int],
    errors_log: ThrottledLog,
    checked: IdentityMemo[bool] | None = None,
) -> Forecast | None:
    if predictor is None:
        return None
    try:
        fc = predictor.forecast(state, horizon)
    except Exception as exc:  # noqa: BLE001 - fail open: no forecast means recency / LRU
        counts["predictor_errors"] += 1
        errors_log.failed("forecast", exc)
        return None
    if not valid_forecast(fc, state.workflow_id, checked):
        counts["predictor_errors"] += 1
        errors_log.failed("forecast", f"invalid forecast for workflow {state.workflow_id!r}")
        return None
    return recalibration.apply(state.app, fc)
