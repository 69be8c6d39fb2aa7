"""The partitioned event log: one Redis stream per workflow partition, written only by the
partition's lease holder.

``APPEND`` is one script per partition batch: it checks that the lease key still holds the
``"<replica>:<token>"`` the batch's events were accepted under (``EventRecord.lease``; an event
accepted under an older lease is refused even when this replica holds the partition again: what
it was applied to has been rebuilt from the log since) and only then takes sequence numbers
(one ``INCRBY``) and adds the entries (``XADD`` with id ``"<seq>-0"``), their outlook records
(``outlook``) as one entry of the partition's outlook stream (id the last seq, ``n`` the first)
with the time Redis wrote them (``t``, Redis ``TIME``), an end's also in the finished stream,
and moves the partition's rebuild base. Otherwise it writes nothing and fails ``FENCED``,
naming both leases. Each entry keeps the event as the Redis store writes it (field ``e``),
the forecast it produced at the owner (``f``, ``outlook.forecast_text`` or empty), the
caller's event id (``i``, may be empty) and the writer's lease value (``o``), so who wrote
what can be checked in Redis afterwards.

The script is idempotent by event id: an event whose id is among the partition's recent ids
(``{p<N>}:ids``, id -> seq of its last ``RECENT_IDS`` events, trimmed in the same script) is
not written again; its seq is the answer. So a batch sent again after its reply was lost (the
script may have run) writes each event once. Such an answer bumps ``{p<N>}:resent``: a write,
so a ``WAIT`` after it covers the original write (``WAIT`` waits for the connection's last
write, and a fresh connection has none). Events without an id are not deduplicated.

The rebuild base (``{p<N>}:base``) is the smallest start sequence number of the partition's
running workflows (or the next number when none runs): a new owner replays the log from there
(``rebuild``), not from its beginning. The log knows the running workflows' starts of the
partitions it writes (``adopt`` hands it those a take-over rebuilt).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import redis
from redis.exceptions import NoScriptError

from pbkv.predictor.forecast import Forecast
from pbkv.service.cluster.clients import ERRORS, is_cluster, sync_client
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.cluster.outlook import (
    Summaries,
    encode_outlook,
    forecast_of_fields,
    forecast_text,
)
from pbkv.service.records import (
    EventRecord,
    WorkflowEnded,
    WorkflowStarted,
    dumps,
    from_payload,
    payload,
)
from pbkv.service.servicers.wiring import manager_key
from pbkv.service.stores.base import StoreError, TraceStore

# KEYS: lease, seq, stream, outlook stream, base, finished stream, ids, resent. ARGV: the lease
# the events were accepted under, base ("": leave it), how many seqs back ``ids`` keeps, then
# (event json, forecast bytes, event id, outlook record) quadruples. The new events' seqs are
# taken at once (``INCRBY``) and their outlook records go into one entry (``outlook``).
APPEND = """
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[1] .. ' holds ' .. (held or 'no lease') ..
                           ', the events were accepted under ' .. ARGV[1])
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[5], ARGV[2]) end
local out, new, mine, same = {}, {}, {}, {}
for i = 4, #ARGV, 4 do
  local id, had = ARGV[i + 2], false
  if id ~= '' then had = mine[id] or redis.call('ZSCORE', KEYS[7], id) end
  if had then
    out[#out + 1] = tonumber(had) or 0
    if mine[id] then same[#out] = mine[id] end
    redis.call('INCR', KEYS[8])
  else
    if id ~= '' then mine[id] = #out + 1 end
    out[#out + 1] = false
    new[#new + 1] = i
  end
end
if #new == 0 then return out end
local last = redis.call('INCRBY', KEYS[2], #new)
local first = last - #new + 1
local s, added, records = first, false, {}
for k = 1, #out do
  if out[k] == false then
    local i = new[s - first + 1]
    redis.call('XADD', KEYS[3], s .. '-0', 'e', ARGV[i], 'f', ARGV[i + 1], 'i', ARGV[i + 2],
               'o', ARGV[1])
    if string.sub(ARGV[i + 3], 1, 4) == '["x"' then
      redis.call('XADD', KEYS[6], s .. '-0', 'r', ARGV[i + 3])
    end
    if ARGV[i + 2] ~= '' then
      redis.call('ZADD', KEYS[7], s, ARGV[i + 2])
      added = true
    end
    records[#records + 1] = ARGV[i + 3]
    out[k] = s
    s = s + 1
  end
end
for k, k0 in pairs(same) do out[k] = out[k0] end  -- an id twice in one batch: written once
local t = redis.call('TIME')
local written = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local batch = '[' .. table.concat(records, ',') .. ']'
redis.call('XADD', KEYS[4], last .. '-0', 'n', first, 'r', batch, 't', written)
if added then redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', last - tonumber(ARGV[3])) end
return out
"""
# Event ids the append script remembers per partition: those of its last this many events. A
# resend must come within them (a caller resends within seconds; the owner's ``SeenEvents``
# answers most resends before they reach Redis).
RECENT_IDS = 10_000
_PAGE = 2_000


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One stream entry: the event (its ``seq`` the entry's), its carried forecast, writer."""

    partition: int
    record: EventRecord
    forecast: Forecast | None
    writer: str


def encode_event(e: EventRecord) -> tuple[str, str, str]:
    """The ``e``, ``f`` (``forecast_text`` or "") and ``i`` fields of ``e``'s entry."""
    text = dumps(
        {"k": e.kind, "t": e.tenant, "w": e.workflow_id, "a": e.at_s, "p": payload(e.event)}
    )
    return text, (forecast_text(e.forecast) if e.forecast is not None else ""), e.event_id


def decode_entry(partition: int, entry_id: bytes | str, fields: dict) -> LoggedEvent:
    """A stream entry as read by XRANGE/XREAD; ``StoreError`` names what is wrong."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        seq = int(eid.split("-")[0])
        d = json.loads(fields[b"e"])
        raw_fc = fields.get(b"f", b"")
        fc = forecast_of_fields(json.loads(raw_fc)) if raw_fc else None
        event = from_payload(d["k"], d["p"])
        eid = fields.get(b"i", b"").decode()
        record = EventRecord(d["t"], d["w"], d["a"], event, seq, forecast=fc, event_id=eid)
        return LoggedEvent(partition, record, fc, fields.get(b"o", b"").decode())
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(f"partition {partition} entry {eid}: {exc!r}") from exc


class NotReplicated(StoreError):
    """Written to the Redis master, but fewer of its replicas than ``wait_replicas`` had it in
    time: not acknowledged. ``seqs`` are the numbers the events took in the log."""

    def __init__(self, message: str, seqs: list[int]) -> None:
        super().__init__(message)
        self.seqs = seqs


class _Call(NamedTuple):
    """One append script: partition ``p``'s events (``idx`` into the batch) accepted under
    ``lease``."""

    p: int
    lease: str
    idx: list[int]
    keys: list[str]
    args: list[str | bytes]


class PartitionLog(TraceStore):
    """A ``TraceStore`` over the partition streams. Each event is written under the lease it
    was accepted under (``EventRecord.lease``) and only while the partition's lease key still
    holds exactly that: an event accepted under an older lease -- even one of this replica,
    which lost the partition and took it back since -- fails alone with ``StoreError``
    naming both leases and is not written. Sequence numbers count per partition.

    ``wait_replicas`` > 0: after each append batch, ``WAIT`` (on the connection that wrote)
    until that many replicas of the Redis master have it, for at most ``wait_timeout_ms``;
    if fewer do, the batch's written events fail with ``NotReplicated`` (they are in the
    master's log, but not acknowledged: a failover could lose them)."""

    name = "cluster"

    def __init__(
        self,
        url: str,
        keys: ClusterKeys,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1_000,
        *,
        timeout_s: float = 5.0,
        recent_ids: int = RECENT_IDS,
    ) -> None:
        self.url, self.keys, self.recent_ids = url, keys, recent_ids
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._cluster = is_cluster(url)
        try:  # a WAIT must come back before the socket gives up on it
            # No retries of its own: an append resent after a lost reply could be written
            # twice (an event without an id); the caller hears UNAVAILABLE and resends by id.
            timeout = max(timeout_s, wait_timeout_ms / 1000 + 1)
            self._redis = sync_client(url, timeout, retry_errors=False)
            self._redis.ping()
        except (*ERRORS, ValueError) as exc:
            raise StoreError(f"cluster {url}: {exc}") from exc
        self._append = self._redis.register_script(APPEND)
        self.summaries = Summaries()  # finished workflows' summaries, by the owner's predictor
        # Per partition this replica writes: running workflow -> its start seq, and the last
        # seq (recorder thread only, after ``adopt`` on the loop while nothing is written).
        self._starts: dict[int, dict[str, int]] = {}
        self._last: dict[int, int] = {}
        self._based: dict[int, str] = {}  # the base this replica last wrote (not sent again)

    def adopt(self, p: int, starts: dict[str, int], last: int) -> None:
        """A take-over rebuilt partition ``p``: its running workflows' starts, its last seq."""
        self._starts[p], self._last[p] = dict(starts), last
        self._based.pop(p, None)

    def forget(self, p: int) -> None:
        """Partition ``p`` is not written here any more (lost, handed over)."""
        self._starts.pop(p, None)
        self._last.pop(p, None)
        self._based.pop(p, None)

    def _base(self, p: int, batch: list[EventRecord]) -> str:
        starts, last = self._starts.get(p), self._last.get(p)
        if starts is None or last is None:  # not adopted (or forgotten meanwhile): leave it
            return ""
        ending = {manager_key(e.tenant, e.workflow_id) for e in batch if e.kind == "end"}
        running = [s for w, s in starts.items() if w not in ending]
        base = str(min(running, default=last + 1))
        return "" if self._based.get(p) == base else base  # (most batches leave it)

    def _written(self, call: _Call, batch: list[EventRecord], seqs: list[int]) -> None:
        for e in batch:
            if isinstance(e.event, WorkflowEnded):
                self.summaries.pop(manager_key(e.tenant, e.workflow_id))
        p, starts = call.p, self._starts.get(call.p)
        if starts is None:
            return
        if call.args[1]:
            self._based[p] = str(call.args[1])
        for e, s in zip(batch, seqs, strict=True):
            w = manager_key(e.tenant, e.workflow_id)
            if isinstance(e.event, WorkflowStarted):
                starts[w] = s
            elif isinstance(e.event, WorkflowEnded):
                starts.pop(w, None)
        self._last[p] = max(self._last[p], seqs[-1])

    def describe(self) -> str:
        k = self.keys
        return f"cluster:{self.url} streams {k.stream(0)}..{k.workflow_partitions - 1}"

    def append(self, events: Sequence[EventRecord]) -> list[int | StoreError]:
        out: list[int | StoreError] = [StoreError("not written")] * len(events)
        calls = self._calls(events, out)
        for call, result in zip(calls, self._send(calls), strict=True):
            if isinstance(result, NotReplicated):  # in the log, but not acknowledged
                self._written(call, [events[i] for i in call.idx], result.seqs)
                for i in call.idx:
                    out[i] = result
                continue
            if isinstance(result, Exception):
                for i in call.idx:
                    out[i] = StoreError(f"partition {call.p}: {result}")
                continue
            seqs = [int(x) for x in result]
            self._written(call, [events[i] for i in call.idx], seqs)
            for i, seq in zip(call.idx, seqs, strict=True):
                out[i] = seq
        return out

    def _calls(self, events: Sequence[EventRecord], out: list) -> list[_Call]:
        """One script per partition and lease accepted under, in the batch's order (a
        partition's older lease first: its events were accepted first)."""
        k = self.keys
        groups: dict[tuple[int, str], list[int]] = {}
        for i, e in enumerate(events):
            p = k.workflow_partition(e.tenant, e.workflow_id)
            if not e.lease:
                out[i] = StoreError(f"workflow partition {p}: accepted under no lease of it")
                continue
            groups.setdefault((p, e.lease), []).append(i)
        calls = []
        for (p, lease), idx in groups.items():
            batch = [events[i] for i in idx]
            args: list[str | bytes] = [lease, self._base(p, batch), str(self.recent_ids)]
            for e in batch:
                finished = None
                if e.kind == "end":  # kept until written: an end written again carries it
                    finished = self.summaries.get(manager_key(e.tenant, e.workflow_id))
                text, forecast, event_id = encode_event(e)
                args.extend((text, forecast, event_id, encode_outlook(e, finished, forecast)))
            keys = [k.lease("p", p), k.seq(p), k.stream(p), k.outlook(p), k.base(p), k.finished(p)]
            keys += [k.ids(p), k.resent(p)]
            calls.append(_Call(p, lease, idx, keys, args))
        return calls

    def _send(self, calls: list[_Call]) -> list:
        """Each call's result: its seqs, or the exception it alone met. One pipeline on one
        server (a connection error fails the whole batch); on a Redis Cluster one call each
        (a partition's keys share one slot; scripts do not pipeline across nodes), or with
        ``wait_replicas`` one pipeline per node, so its WAIT runs on the connection that
        wrote; a node that fails fails its own calls only."""
        if not self._cluster:
            try:
                return self._pipelined(self._redis, calls)
            except ERRORS as exc:
                raise StoreError(f"cluster {self.url}: append failed: {exc}") from exc
        groups: dict[str, list[int]] = {}
        for n, call in enumerate(calls):
            node = self._redis.get_node_from_key(call.keys[0]).name if self.wait_replicas else n
            groups.setdefault(str(node), []).append(n)
        results: list = [None] * len(calls)
        lost = False
        for node, ns in groups.items():
            try:
                if self.wait_replicas:
                    client = self._redis.get_redis_connection(self._redis.get_node(node_name=node))
                    done = self._pipelined(client, [calls[n] for n in ns])
                else:
                    done = [self._one(calls[ns[0]])]
            except ERRORS as exc:
                lost = True
                done = [StoreError(f"cluster {self.url}: append failed: {exc}")] * len(ns)
            for n, result in zip(ns, done, strict=True):
                results[n] = result
        # A refusal other than fencing (MOVED, CLUSTERDOWN: a failover) -> look it up again.
        moved = any(
            isinstance(r, redis.ResponseError) and not str(r).startswith("FENCED") for r in results
        )
        if lost or moved:
            with contextlib.suppress(*ERRORS):  # a failover moved a slot:
                self._redis.nodes_manager.initialize()  # look the topology up again
        return results

    def _one(self, call: _Call):
        try:
            return self._append(keys=call.keys, args=call.args)
        except redis.ResponseError as exc:
            return exc  # fenced: this partition alone fails

    def _pipelined(self, client, calls: list[_Call]) -> list:
        """The calls' scripts in one pipeline, by ``EVALSHA`` alone (redis-py's pipelined
        ``Script`` asks ``SCRIPT EXISTS`` first: a second round trip per batch). Calls that
        met ``NOSCRIPT`` (a restarted or flushed Redis) did not run: the script is loaded and
        they are sent again."""
        results = self._round(client, calls)
        missing = [n for n, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            client.script_load(APPEND)
            for n, r in zip(missing, self._round(client, [calls[n] for n in missing]), strict=True):
                results[n] = r
        return results

    def _round(self, client, calls: list[_Call]) -> list:
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._append.sha, len(call.keys), *call.keys, *call.args)
        if self.wait_replicas:
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        results = pipe.execute(raise_on_error=False)
        if not self.wait_replicas:
            return results
        *results, acked = results
        if isinstance(acked, Exception) or int(acked) < self.wait_replicas:
            results = [self._unreplicated(c, r, acked) for c, r in zip(calls, results, strict=True)]
        return results

    def _unreplicated(self, call: _Call, result, acked) -> object:
        if isinstance(result, Exception):
            return result
        seqs = [int(x) for x in result]
        return NotReplicated(
            f"partition {call.p}: written as seq {seqs[0]}..{seqs[-1]}, but {acked} of "
            f"cluster_wait_replicas={self.wait_replicas} Redis replicas had it within "
            f"{self.wait_timeout_ms} ms: not acknowledged (a failover of the master may lose "
            f"it)",
            seqs,
        )

    def read(self, partition: int, after_seq: int = 0) -> Iterator[LoggedEvent]:
        """The partition's entries after ``after_seq``, in order (paged)."""
        key = self.keys.stream(partition)
        start = f"({after_seq}-0" if after_seq else "-"
        while True:
            try:
                chunk = self._redis.xrange(key, start, "+", count=_PAGE)
            except ERRORS as exc:
                raise StoreError(f"redis {key}: read failed: {exc}") from exc
            for entry_id, fields in chunk:
                yield decode_entry(partition, entry_id, fields)
            if len(chunk) < _PAGE:
                return
            start = f"({chunk[-1][0].decode()}"

    def events(self, after_seq: int = 0) -> Iterator[EventRecord]:
        """Every partition's events in turn (each partition in order)."""
        for p in range(self.keys.workflow_partitions):
            for logged in self.read(p, after_seq):
                yield logged.record

    def close(self) -> None:
        self._redis.close()
