"""``pbkv bench service --replay K``: the bench's workload through the Session servicer in
process, without the gRPC transport: what the serving path costs per event, and a digest of
every reply to show that two versions answer the same.

Every event of ``workflows`` workflows (``concurrency`` interleaved at a time, each: start,
StepStarted + StepFinished x ``steps``, end; the agents of ``service_load``) goes in requests
of ``batch`` events through ``OrchestratorServicer.Session`` on a ``ServerThread`` (SQLite,
synchronous=FULL, the bench's markov model, the GC set as ``pbkv serve`` sets it).
Reported: the serving thread's and the process's CPU per event, and a SHA-256 over every
reply with its ``event_seq`` cleared (the forecasts, ids and codes).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pbkv.bench.service_process import AGENTS, default_model
from pbkv.service.config import ServiceConfig
from pbkv.service.server import GC_YOUNG_THRESHOLD
from pbkv.service.server_thread import ServerThread
from pbkv.v1 import pbkv_pb2 as pb


def _workflow(n: int, steps: int) -> Iterator[tuple[str, Any]]:
    wid = f"w-{n}"
    yield "start", pb.StartWorkflowRequest(workflow_id=wid, app="bench", task="load test")
    for s in range(steps):
        agent = AGENTS[(s * 7 + n) % len(AGENTS)]
        yield "step_started", pb.StepStartedRequest(workflow_id=wid, agent=agent)
        yield (
            "step_finished",
            pb.StepFinishedRequest(
                workflow_id=wid, agent=agent, step_index=s, output_text="ok", output_tokens=16
            ),
        )
    yield "end", pb.EndWorkflowRequest(workflow_id=wid)


def session_events(workflows: int, steps: int, concurrency: int) -> list[pb.SessionEvent]:
    """The workload's events in order: ``concurrency`` workflows round-robin at a time."""
    events: list[pb.SessionEvent] = []
    for first in range(0, workflows, concurrency):
        running = [_workflow(n, steps) for n in range(first, min(first + concurrency, workflows))]
        while running:
            alive = []
            for wf in running:
                kind, request = next(wf, (None, None))
                if kind is None:
                    continue
                event = pb.SessionEvent(id=len(events) + 1)
                getattr(event, kind).CopyFrom(request)
                events.append(event)
                alive.append(wf)
            running = alive
    return events


class _Context:
    def invocation_metadata(self):
        return ()

    async def abort(self, code, message):
        raise RuntimeError(f"Session aborted: {code} {message}")


async def _drive(orchestrator, requests: list[pb.SessionRequest]) -> dict[str, Any]:
    async def stream():
        for request in requests:
            yield request
            await asyncio.sleep(0)

    digest, events, failed = hashlib.sha256(), 0, 0
    thread0, process0 = time.thread_time(), time.process_time()
    async for reply in orchestrator.Session(stream(), _Context()):
        for result in reply.results:
            failed += result.code != 0
            result.event_seq = 0  # the store's numbering, not the answer
        events += len(reply.results)
        digest.update(reply.SerializeToString(deterministic=True))
    thread_s, process_s = time.thread_time() - thread0, time.process_time() - process0
    return {
        "events": events,
        "failed": failed,
        "serving_thread_us_per_event": 1e6 * thread_s / events,
        "process_us_per_event": 1e6 * process_s / events,
        "replies_sha256": digest.hexdigest(),
    }


def replay(
    batch: int, workflows: int = 2_000, steps: int = 8, concurrency: int = 1_000
) -> dict[str, Any]:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    events = session_events(workflows, steps, concurrency)
    requests = [
        pb.SessionRequest(events=events[i : i + batch]) for i in range(0, len(events), batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServiceConfig(
            port=0,
            http_port=None,
            store_path=Path(tmp) / "traces.sqlite3",
            model_path=default_model(Path(tmp)),
            watch_model_s=None,
            max_pending_events=100_000,
            max_active_workflows=1_000_000,
        )
        young = gc.get_threshold()
        with ServerThread(cfg) as srv:
            gc.collect()  # as pbkv serve: start-up objects frozen, young threshold raised
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *young[1:])
            try:
                out = srv.call(_drive(srv.server.orchestrator, requests), timeout_s=3_600)
            finally:
                gc.set_threshold(*young)
                gc.unfreeze()
    return {"batch": batch, "workflows": workflows, **out}
