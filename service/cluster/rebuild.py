"""Taking over a workflow partition: its running workflows rebuilt in full from its log.

Other replicas hold a partition's workflows only as outlooks (``follower``); the owner needs
their whole state to predict. A replica taking partition ``p`` drops what it held of it and
replays the event log from the partition's rebuild base (``{p<N>}:base``, kept by the owner's
appends: every workflow that started before it had ended), applying each event as its owner
did, with the owner's forecast carried (``CarriedPredictor``: no prediction, no learning).
Events of workflows that started before the base are skipped (an end is remembered, so a late
call for it is still refused). Event ids met are remembered, so a resend of an event the
previous owner logged is answered from the log, not applied again.
"""

from __future__ import annotations

import contextlib
import logging

from pbkv.cache_manager import errors as cm_errors
from pbkv.service.cluster.follower import READ_COUNT, Follower
from pbkv.service.cluster.log import decode_entry
from pbkv.service.servicers.orchestrator import apply_event
from pbkv.service.servicers.wiring import WorkflowKey
from pbkv.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_errors = ThrottledLog(log, "pbkv cluster rebuild")


async def rebuild(client, follower: Follower, p: int) -> tuple[dict[str, int], int, int]:
    """Rebuild partition ``p`` into ``follower``'s manager; returns (running workflow -> its
    start seq, the partition's last seq, events applied)."""
    keys, manager, carrier = follower.keys, follower.manager, follower.carrier
    follower.forget(p)
    base = int(await client.get(keys.base(p)) or 0)
    last = int(await client.get(keys.seq(p)) or 0)  # ours now: nobody appends meanwhile
    start = f"{base}-0" if base else "-"
    starts: dict[str, int] = {}
    n = 0
    while True:
        chunk = await client.xrange(keys.stream(p), start, "+", count=READ_COUNT)
        for entry_id, fields in chunk:
            logged = decode_entry(p, entry_id, fields)
            r = logged.record
            key = WorkflowKey(r.tenant, r.workflow_id)
            w = key.manager_id
            last = max(last, r.seq)
            if r.kind == "start":
                starts[w] = r.seq
            elif r.kind == "end":
                starts.pop(w, None)
            if r.kind != "start" and not manager.has_workflow(w):
                if r.kind == "end":
                    manager.remember_ended((w,))
                continue  # it started before the base
            carry = carrier.carrying(logged.forecast) if carrier else contextlib.nullcontext()
            try:
                with carry:
                    apply_event(manager, key, r.event)
            except cm_errors.CacheManagerError as exc:
                _errors.failed(f"partition {p} seq {r.seq}", exc)
            if r.event_id:
                follower.seen.remember(r.event_id, r.seq, logged.forecast)
            n += 1
        if len(chunk) < READ_COUNT:
            break
        start = f"({chunk[-1][0].decode()}"
    follower.passed(p, last)
    follower.fresh.discard(p)
    return starts, last, n
