"""Outlook records: what a workflow partition's owner tells the other replicas.

An engine's plan ranks a block by the outlooks of the workflows that use it (``policies``:
a workflow's forecast and its running steps), and those workflows may be owned by another
replica. Their owner does the work of each event once (validation, state, prediction) and
writes, beside the event in the partition's log, one compact record to the partition's
outlook stream (``<prefix>:{p<N>}:outlook``, entry id ``<seq>-0`` as the event's, in the same
fenced script): ``r`` a short JSON list, ``f`` the forecast's protobuf bytes (finished steps),
``t`` Redis's clock when it wrote the record::

    ["s", manager id, at_s, app, task, now_s]        workflow started
    ["+", manager id, at_s, agent, parallel_group]   step started (running)
    ["-", manager id, at_s, agent]                   step finished (+ forecast ``f``)
    ["x", manager id, at_s, app, task, rounds]       workflow ended; ``rounds`` (its last
                                                     ``STEP_WINDOW`` steps' agents by round,
                                                     or null) lets every replica's predictor
                                                     learn from it (``observe_finished``)

Other replicas apply these cheaply (``follower``): a remote workflow is a manager workflow
with no steps whose running agents and forecast come from the records (``carried_step``).
"""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass

from pbkv.predictor.forecast import Forecast, ObservedStep, WorkflowState
from pbkv.service.convert import ConversionError, forecast_of_bytes
from pbkv.service.records import (
    EventRecord,
    StepFinished,
    StepStarted,
    WorkflowEnded,
    WorkflowStarted,
)
from pbkv.service.servicers.wiring import manager_key
from pbkv.service.stores.base import StoreError

MAX_ROUNDS = 128  # rounds carried in a finished record (a state keeps STEP_WINDOW steps)
MAX_SUMMARIES = 10_000  # finished summaries waiting for their end event's append


@dataclass(frozen=True, slots=True)
class OutlookRecord:
    partition: int
    seq: int
    kind: str  # "s", "+", "-", "x"
    workflow: str  # the manager id ("<tenant>/<workflow_id>")
    at_s: float  # the owner's wall clock when it accepted the event
    args: tuple
    forecast: Forecast | None
    written_s: float | None = None  # Redis's clock when it wrote the record (``TIME``)


def encode_outlook(e: EventRecord, finished: list | None) -> str:
    """The ``r`` field of ``e``'s outlook record (``finished``: an end's ``summary``)."""
    w = manager_key(e.tenant, e.workflow_id)
    match e.event:
        case WorkflowStarted(app=app, task=task, now_s=now_s):
            out = ["s", w, e.at_s, app, task, now_s]
        case StepStarted(agent=agent, parallel_group=group):
            out = ["+", w, e.at_s, agent, group]
        case StepFinished(agent=agent):
            out = ["-", w, e.at_s, agent]
        case WorkflowEnded():
            out = ["x", w, e.at_s, *(finished or (None, None, None))]
    return json.dumps(out, separators=(",", ":"))


def decode_outlook(partition: int, entry_id: bytes | str, fields: dict) -> OutlookRecord:
    """An outlook stream entry; ``StoreError`` names what is wrong."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        r = json.loads(fields[b"r"])
        raw_fc = fields.get(b"f", b"")
        fc = forecast_of_bytes(raw_fc) if raw_fc else None
        written = fields.get(b"t")
        return OutlookRecord(
            partition,
            int(eid.split("-")[0]),
            r[0],
            r[1],
            float(r[2]),
            tuple(r[3:]),
            fc,
            float(written) if written else None,
        )
    except (ValueError, KeyError, TypeError, IndexError, ConversionError) as exc:
        raise StoreError(f"partition {partition} outlook {eid}: {exc!r}") from exc


def summary(state: WorkflowState) -> list:
    """[app, task, rounds] of a finished workflow (what ``observe_finished`` reads)."""
    rounds = [list(r) for r in state.rounds()[-MAX_ROUNDS:]]
    return [state.app, state.task, rounds]


def finished_state(workflow: str, app: str, task: str, rounds: list) -> WorkflowState:
    """A finished workflow's state with the rounds of its summary (a fan-out keeps its
    parallel group, so ``rounds()`` gives them back exactly)."""
    steps = tuple(
        ObservedStep(str(a), f"r{i}" if len(r) > 1 else None)
        for i, r in enumerate(rounds[:MAX_ROUNDS])
        for a in r
    )
    tenant = workflow.split("/", 1)[0]
    return WorkflowState(workflow, str(app), str(task or ""), tenant, steps)


class Summaries:
    """Finished summaries made at the owner (``observe_finished``, on the event loop) until
    the log appends the workflow's end event (on the recorder's thread): dict operations
    only, the oldest dropped past ``MAX_SUMMARIES``."""

    def __init__(self) -> None:
        self._by_workflow: collections.OrderedDict[str, list] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, workflow: str, value: list) -> None:
        with self._lock:
            self._by_workflow[workflow] = value
            while len(self._by_workflow) > MAX_SUMMARIES:
                self._by_workflow.popitem(last=False)

    def get(self, workflow: str) -> list | None:
        with self._lock:
            return self._by_workflow.get(workflow)

    def pop(self, workflow: str) -> list | None:
        with self._lock:
            return self._by_workflow.pop(workflow, None)
