"""The engine-neutral half of a replay: WorkflowDriver's orchestrator calls and results, and
ClientOrchestrator's tenant and failure handling."""

from __future__ import annotations

import grpc
import pytest

from pbkv.engine_adapter.replay import (
    ClientOrchestrator,
    ReplayResult,
    StepOutcome,
    WorkflowDriver,
    WorkflowResult,
    check_workload,
    percentile,
)
from pbkv.service.client import PbkvError
from pbkv.trace import Segment, Step, Workflow


def _wf(wid: str, groups: list[str | None], tenant: str = "t1") -> Workflow:
    steps = tuple(
        Step(f"a{i}", (Segment("new", 4),), 2, parallel_group=g, output_text=f"o{i}")
        for i, g in enumerate(groups)
    )
    return Workflow(wid, "app", steps, tenant=tenant, task="task")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start_workflow(self, workflow_id, app, *, tenant="default", task="", now_s=None):
        self.calls.append(("start", workflow_id, tenant, task, now_s))

    def step_started(self, workflow_id, agent, *, parallel_group=None, now_s=None):
        self.calls.append(("started", workflow_id, agent, parallel_group, now_s))

    def step_finished(self, workflow_id, step):
        self.calls.append(
            (
                "finished",
                workflow_id,
                step.agent,
                step.output_tokens,
                step.output_text,
                step.start_s,
                step.end_s,
            )
        )

    def end_workflow(self, workflow_id, *, now_s=None):
        self.calls.append(("end", workflow_id, now_s))


def test_driver_reports_a_parallel_round_in_trace_order_once_its_last_request_is_done() -> None:
    clock = [0.0]
    submitted: list[str] = []
    rec = Recorder()
    driver = WorkflowDriver(rec, lambda rid, w, i: submitted.append(rid), lambda: clock[0])
    driver.start(_wf("w", ["g", "g", None]))
    assert submitted == ["t1/w/0", "t1/w/1"]
    assert driver.step_of("t1/w/1").agent == "a1"
    clock[0] = 2.0
    assert driver.finish("t1/w/1", StepOutcome(3, "x1", 0.0, 2.0)) is None  # a0 still runs
    clock[0] = 3.0
    assert driver.finish("t1/w/0", StepOutcome(5, None, 0.0, 3.0)) == "w"
    driver.start_round("w")
    assert submitted[-1] == "t1/w/2"
    clock[0] = 4.5
    assert driver.finish("t1/w/2", StepOutcome(2)) is None
    assert rec.calls == [
        ("start", "w", "t1", "task", 0.0),
        ("started", "w", "a0", "g", 0.0),
        ("started", "w", "a1", "g", 0.0),
        ("finished", "w", "a0", 5, None, 0.0, 3.0),
        ("finished", "w", "a1", 3, "x1", 0.0, 2.0),
        ("started", "w", "a2", None, 3.0),
        ("finished", "w", "a2", 2, None, None, None),
        ("end", "w", 4.5),
    ]
    assert driver.done == [WorkflowResult("w", "app", 0.0, 0.0, 4.5, 3)]
    assert driver.live == {}


def test_driver_without_stamping_leaves_now_to_the_orchestrator_and_measures_cpu() -> None:
    cpu = iter([1.0, 1.75])
    rec = Recorder()
    driver = WorkflowDriver(
        rec, lambda rid, w, i: None, lambda: 10.0, stamp=False, cpu_clock=lambda: next(cpu)
    )
    driver.start(_wf("w", [None]))
    driver.finish("t1/w/0", StepOutcome(1))
    assert [c[-1] for c in rec.calls if c[0] in ("start", "started", "end")] == [None] * 3
    assert driver.done[0].cpu_s == 0.75 and driver.done[0].latency_s == 0.0


def test_replay_result_summary_and_latency_figures() -> None:
    wfs = tuple(
        WorkflowResult(f"w{i}", "a", 0.0, 0.0, float(i), 1, cpu_s=0.5 * i) for i in (1, 2, 3, 4)
    )
    res = ReplayResult(wfs, ("r",) * 5, None, 8.0, {"gpu_hit_rate": 0.25})
    assert res.summary() == {
        "workflows": 4,
        "requests": 5,
        "mean_latency_s": 2.5,
        "p95_latency_s": 4.0,
        "makespan_s": 8.0,
        "throughput_wf_per_s": 0.5,
        "gpu_hit_rate": 0.25,
    }
    assert res.median_latency_s == 2.5 and res.median_cpu_s == 1.25 and res.mean_cpu_s == 1.25
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0


def test_check_workload_refuses_empty_duplicate_and_stepless_workloads() -> None:
    with pytest.raises(ValueError, match="no workflows"):
        check_workload([])
    with pytest.raises(ValueError, match="'w' appears twice"):
        check_workload([_wf("w", [None]), _wf("w", [None])])
    with pytest.raises(ValueError, match="'e' has no steps"):
        check_workload([Workflow("e", "app", ())])


class FlakyClient:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.down = False

    def _record(self, *call):
        if self.down:
            raise PbkvError(grpc.StatusCode.UNAVAILABLE, "service gone")
        self.calls.append(call)
        return "forecast"

    def start_workflow(self, wid, app, **kw):
        return self._record("start", wid, kw)

    def step_started(self, wid, agent, **kw):
        return self._record("started", wid, kw)

    def step_finished(self, wid, agent, **kw):
        return self._record("finished", wid, kw)

    def end_workflow(self, wid, **kw):
        return self._record("end", wid, kw)


def test_client_orchestrator_sends_the_tenant_with_every_call_and_fails_open() -> None:
    from pbkv.predictor.forecast import ObservedStep

    client = FlakyClient()
    orch = ClientOrchestrator(client)
    orch.start_workflow("w", "app", tenant="acme", task="t", now_s=1.0)
    orch.step_started("w", "a", parallel_group="g", now_s=1.5)
    step = ObservedStep(
        agent="a",
        parallel_group=None,
        output_text=None,
        output_tokens=7,
        start_s=None,
        end_s=None,
        phase=None,
    )
    assert orch.step_finished("w", step) == "forecast"
    client.down = True
    assert orch.step_finished("w", step) is None
    orch.end_workflow("w", now_s=2.0)
    assert orch.num_errors == 2 and orch.last_error.code is grpc.StatusCode.UNAVAILABLE
    assert client.calls == [
        ("start", "w", {"task": "t", "now_s": 1.0, "tenant": "acme"}),
        ("started", "w", {"parallel_group": "g", "now_s": 1.5, "tenant": "acme"}),
        ("finished", "w", {"output_tokens": 7, "tenant": "acme"}),
    ]
    assert orch._tenants == {}  # forgotten at the end even when the call failed


def test_client_orchestrator_lets_errors_other_than_channel_errors_through() -> None:
    class BuggyClient(FlakyClient):
        def start_workflow(self, wid, app, **kw):
            raise TypeError("a bug, not an outage")

    orch = ClientOrchestrator(BuggyClient())
    with pytest.raises(TypeError, match="a bug"):
        orch.start_workflow("w", "app")
    assert orch.num_errors == 0
