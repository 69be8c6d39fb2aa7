"""Boundary prefetch: an orchestrator event alone (no engine message) makes the service send
the engine a new plan, so the prefetch for the predicted agent arrives during the boundary and
not with that agent's own request. Real server, real manager, real EngineLinkClient."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from pbkv.cache_manager.events import (
    BlockRemoved,
    BlockStored,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.predictor.artifact import save_model
from pbkv.predictor.registry import PREDICTORS
from pbkv.service.client import PbkvClient
from pbkv.service.config import ServiceConfig
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.service.server_thread import ServerThread
from pbkv.trace import Segment, Step, Workflow

CODE = (b"code-1", b"code-2")  # the "code" agent's prompt blocks


def _workflow(wid: str, agents: list[str]) -> Workflow:
    return Workflow(wid, "app", tuple(Step(a, (Segment(f"system:{a}", 32),), 8) for a in agents))


def _plan_after(link: EngineLinkClient, seq: int, timeout_s: float):
    # Bounded poll of the link's latest-wins plan slot, filled by its own thread.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        plan = link.latest_plan()
        if plan is not None and plan.seq > seq:
            return plan
        time.sleep(0.01)
    return link.latest_plan()


def test_a_finished_step_alone_sends_the_engine_a_plan_that_prefetches_the_next_agent(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    train = [_workflow(f"t{i}", ["plan", "code", "test", "code", "test"]) for i in range(5)]
    save_model(PREDICTORS.create("markov1", workflows=train), model, {"version": "a"})
    cfg = ServiceConfig(
        port=0,
        http_port=None,
        store_path=tmp_path / "traces.sqlite3",
        watch_model_s=None,
        model_path=model,
    )
    with (
        ServerThread(cfg) as srv,
        PbkvClient(srv.target, timeout_s=10) as client,
        EngineLinkClient(
            EngineLinkConfig(
                target=srv.target, engine_id="e0", gpu_blocks=8, cpu_blocks=8, tokens_per_block=16
            )
        ) as link,
    ):
        assert link.wait_connected(10)
        # w1's "code" step used CODE; the blocks then moved to the CPU tier.
        client.start_workflow("w1", "app")
        for agent in ("plan", "code"):
            client.step_started("w1", agent)
            if agent == "code":
                link.send(BlockStored("e0", CODE, None, 16, Tier.GPU))
                link.send(RequestStarted("e0", "r0", CODE, 32, 0, 0, "w1", "code", "default"))
                link.send(RequestFinished("e0", "r0", 8))
            client.step_finished("w1", agent)
        link.send(BlockStored("e0", CODE, None, 16, Tier.CPU))
        link.send(BlockRemoved("e0", CODE, Tier.GPU))
        client.step_started("w1", "test")
        assert link.sync(10)
        before = link.latest_plan()
        assert before is not None
        assert not set(CODE) & set(before.prefetch)
        # From here on the engine says nothing: only the orchestrator speaks.
        sent = link.stats().events_sent
        forecast = client.step_finished("w1", "test")
        assert max(forecast.agents, key=lambda a: a.p_next).agent == "code"
        after = _plan_after(link, before.seq, timeout_s=10)
        assert link.stats().events_sent == sent
        assert after is not None and after.seq > before.seq
        assert set(CODE) <= set(after.prefetch)


@pytest.mark.parametrize(("refresh_s", "fresh"), [(0.2, True), (60.0, False)])
def test_an_unchanged_plan_is_repeated_so_an_idle_engine_keeps_it(
    tmp_path: Path, refresh_s: float, fresh: bool
) -> None:
    cfg = ServiceConfig(
        port=0,
        http_port=None,
        store_path=tmp_path / "traces.sqlite3",
        watch_model_s=None,
        plan_refresh_s=refresh_s,
    )
    link_cfg = EngineLinkConfig(engine_id="e0", gpu_blocks=8, cpu_blocks=8, max_plan_age_s=0.6)
    with (
        ServerThread(cfg) as srv,
        EngineLinkClient(dataclasses.replace(link_cfg, target=srv.target)) as link,
    ):
        assert link.wait_connected(10)
        assert _plan_after(link, -1, timeout_s=10) is not None  # the hello's answer
        time.sleep(1.5)  # the engine and the orchestrators say nothing for a while
        assert (link.latest_plan() is not None) is fresh
