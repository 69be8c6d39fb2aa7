"""Outlook records: what a workflow partition's owner tells the other replicas.

An engine's plan ranks a block by the outlooks of the workflows that use it (``policies``:
a workflow's forecast and its running steps), and those workflows may be owned by another
replica. Their owner does the work of each event once (validation, state, prediction) and
writes, beside the event in the partition's log, one compact record to the partition's
outlook stream (``<prefix>:{p<N>}:outlook``, in the same fenced script). One stream entry
holds the records of one append call (a partition's share of a group commit), so a batch
costs Redis one ``XADD`` and a follower one ``json.loads``: entry id ``<last seq>-0``, ``n``
the first record's seq (the others follow it one by one), ``r`` a JSON list of the records,
``t`` Redis's clock when it wrote them. A record is a short JSON list::

    ["s", manager id, at_s, app, task, now_s]        workflow started
    ["+", manager id, at_s, agent, parallel_group]   step started (running)
    ["-", manager id, at_s, agent, forecast]         step finished; the owner's forecast as
                                                     ``forecast_text`` (or null)
    ["x", manager id, at_s, app, task, rounds]       workflow ended; ``rounds`` (its last
                                                     ``STEP_WINDOW`` steps' agents by round,
                                                     or null) lets every replica's predictor
                                                     learn from it (``observe_finished``)

The finished stream (``{p<N>}:finished``) holds the ``"x"`` records alone, one per entry
(id ``<seq>-0``, ``r`` the record). The forecast travels as JSON, not protobuf: the follower
decodes one JSON text per batch and builds the ``Forecast`` straight from it.

Other replicas apply these cheaply (``follower``): a remote workflow is a manager workflow
with no steps whose running agents and forecast come from the records (``carried_step``).
"""

from __future__ import annotations

import collections
import json
import threading
from typing import NamedTuple

from pbkv.predictor.forecast import AgentForecast, Forecast, ObservedStep, WorkflowState
from pbkv.service.records import (
    EventRecord,
    StepFinished,
    StepStarted,
    WorkflowEnded,
    WorkflowStarted,
    dumps,
)
from pbkv.service.servicers.wiring import manager_key
from pbkv.service.stores.base import StoreError

MAX_ROUNDS = 128  # rounds carried in a finished record (a state keeps STEP_WINDOW steps)
MAX_SUMMARIES = 10_000  # finished summaries waiting for their end event's append


class OutlookRecord(NamedTuple):  # (a tuple: followers make one per record)
    partition: int
    seq: int
    kind: str  # "s", "+", "-", "x"
    workflow: str  # the manager id ("<tenant>/<workflow_id>")
    at_s: float  # the owner's wall clock when it accepted the event
    args: tuple
    forecast: Forecast | None
    written_s: float | None = None  # Redis's clock when it wrote the record (``TIME``)


def forecast_text(f: Forecast) -> str:
    """``f`` as JSON (what the log keeps beside an event and a step's end record carries; like
    the protobuf form, without ``raw_top_p``)."""
    agents = [[a.agent, a.p_within, a.eta_steps] for a in f.agents]
    return dumps([f.workflow_id, f.step_index, f.horizon, f.confidence, f.model_version, agents])


def forecast_of_fields(v: list) -> Forecast:
    """``forecast_text`` back, once ``json.loads`` read it."""
    workflow_id, step_index, horizon, confidence, version, agents = v
    return Forecast(
        str(workflow_id),
        int(step_index),
        int(horizon),
        tuple(AgentForecast(str(a), tuple(map(float, p)), eta) for a, p, eta in agents),
        float(confidence),
        str(version),
    )


def encode_outlook(e: EventRecord, finished: list | None, forecast: str) -> str:
    """``e``'s outlook record (``finished``: an end's ``summary``; ``forecast``: its
    ``forecast_text`` or "")."""
    w = manager_key(e.tenant, e.workflow_id)
    match e.event:
        case WorkflowStarted(app=app, task=task, now_s=now_s):
            return dumps(["s", w, e.at_s, app, task, now_s])
        case StepStarted(agent=agent, parallel_group=group):
            return dumps(["+", w, e.at_s, agent, group])
        case StepFinished(agent=agent):  # the forecast's text as it is, not encoded again
            return f"{dumps(['-', w, e.at_s, agent])[:-1]},{forecast or 'null'}]"
        case WorkflowEnded():
            return dumps(["x", w, e.at_s, *(finished or (None, None, None))])
    raise TypeError(f"not an event: {e.event!r}")


def _record(partition: int, seq: int, r: list, written_s: float | None) -> OutlookRecord:
    kind, args, fc = r[0], tuple(r[3:]), None
    if kind == "-":
        args, fc = args[:1], forecast_of_fields(args[1]) if args[1] is not None else None
    return OutlookRecord(partition, seq, kind, r[1], float(r[2]), args, fc, written_s)


def decode_outlooks(partition: int, entry_id: bytes | str, fields: dict) -> list[OutlookRecord]:
    """The records of an outlook stream entry (``n`` first seq, ``r`` their list) or of a
    finished stream entry (``r`` one record, its seq the entry's); ``StoreError`` names what
    is wrong."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        r = json.loads(fields[b"r"])
        written = fields.get(b"t")
        written_s = float(written) if written else None
        first = fields.get(b"n")
        if first is None:
            return [_record(partition, int(eid.split("-")[0]), r, written_s)]
        return [_record(partition, int(first) + i, x, written_s) for i, x in enumerate(r)]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
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
