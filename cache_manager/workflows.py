"""The manager's workflow side: a running workflow as policies see it, and the checks on what
a predictor hands back (a forecast is trusted only once it passes them)."""

from __future__ import annotations

import math

from pbkv.cache_manager.errors import CacheManagerError
from pbkv.cache_manager.scorer import Outlook
from pbkv.identity_memo import IdentityMemo
from pbkv.predictor.forecast import AgentForecast, Forecast, WorkflowState

GROUP_EPS = 1e-3  # an agent group's outlook must move this much to re-rank its blocks


class RunningWorkflow:
    """A running workflow (the ``WorkflowView`` policies read)."""

    __slots__ = (
        "workflow_id",
        "app",
        "state",
        "forecast",
        "running",
        "running_group",
        "unjudged",
        "outlooks",
    )

    def __init__(self, state: WorkflowState) -> None:
        self.workflow_id = state.workflow_id
        self.app = state.app
        self.state = state
        self.forecast: Forecast | None = None
        self.running: dict[str, int] = {}
        self.running_group: str | None = None
        self.unjudged: Forecast | None = None  # judged by the next step that starts
        self.outlooks: dict[str, Outlook] = {}

    def begin_step(self, agent: str, parallel_group: str | None) -> None:
        """A step of ``agent`` started (in ``parallel_group``, if any)."""
        self.running[agent] = self.running.get(agent, 0) + 1
        self.running_group = parallel_group

    def end_step(self, agent: str) -> bool:
        """A step of ``agent`` finished; False (and nothing changes) if none was running."""
        left = self.running.get(agent, 0) - 1
        if left < 0:
            return False
        if left:
            self.running[agent] = left
        else:
            del self.running[agent]
        if not self.running:
            self.running_group = None
        return True


def check_name(arg: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise CacheManagerError(f"{arg} must be a non-empty string, got {value!r}")


def valid_forecast(fc: object, workflow_id: str, checked: IdentityMemo[bool] | None = None) -> bool:
    """A forecast the scorer can trust: right type and workflow, finite probabilities in
    [0, 1] (``Forecast`` checks that on construction, but a predictor can hand back anything).
    ``checked`` remembers agents tuples found valid for a horizon, when they cannot change
    (tuples of ``AgentForecast`` with tuple ``p_within``): a caching predictor hands back the
    same one for many workflows."""
    if not isinstance(fc, Forecast) or fc.workflow_id != workflow_id or fc.horizon < 1:
        return False
    if not (isinstance(fc.confidence, int | float) and 0.0 <= fc.confidence <= 1.0):
        return False
    horizon, agents = fc.horizon, fc.agents
    if checked is not None and checked.get(agents, horizon):
        return True
    frozen = type(agents) is tuple
    for a in agents:
        if len(a.p_within) != horizon:
            return False
        for p in a.p_within:
            if not ((type(p) is float or isinstance(p, int | float)) and 0.0 <= p <= 1.0):
                return False
        if a.eta_steps is not None and not (math.isfinite(a.eta_steps) and a.eta_steps >= 0):
            return False
        frozen = frozen and type(a) is AgentForecast and type(a.p_within) is tuple
    if checked is not None and frozen:
        checked.put(agents, horizon, True)
    return True


def outlooks_close(a: Outlook | None, b: Outlook | None) -> bool:
    """Two group outlooks differ by less than ``GROUP_EPS`` (no re-rank needed)."""
    if a is None or b is None:
        return a is b
    if (a.eta_steps is None) != (b.eta_steps is None):
        return False
    return (
        abs(a.p - b.p) <= GROUP_EPS
        and abs(a.p_host - b.p_host) <= GROUP_EPS
        and abs(a.confidence - b.confidence) <= GROUP_EPS
        and (a.eta_steps is None or abs(a.eta_steps - b.eta_steps) <= GROUP_EPS)
    )
