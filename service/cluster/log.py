"""The partitioned event log: one Redis stream per workflow partition, written only by the
partition's lease holder.

``APPEND`` is one script per partition batch: it checks that the lease key still holds this
replica's ``"<replica>:<token>"`` and only then takes sequence numbers (``INCR``) and adds the
entries (``XADD`` with id ``"<seq>-0"``), each with its outlook record (``outlook``) in the
partition's outlook stream under the same id with the time Redis wrote it (``t``, Redis
``TIME``), an end's also in the finished stream, and moves the partition's rebuild base. A
replica whose lease expired or moved gets a ``FENCED`` error and writes nothing. Each entry
keeps the event as the Redis store writes it (field ``e``), the forecast it produced at the
owner (``f``, protobuf bytes or empty), the caller's event id (``i``, may be empty) and the
writer's lease value (``o``), so who wrote what can be checked in Redis afterwards.

The rebuild base (``{p<N>}:base``) is the smallest start sequence number of the partition's
running workflows (or the next number when none runs): a new owner replays the log from there
(``rebuild``), not from its beginning. The log knows the running workflows' starts of the
partitions it writes (``adopt`` hands it those a take-over rebuilt).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import redis

from pbkv.predictor.forecast import Forecast
from pbkv.service.cluster.clients import ERRORS, is_cluster, sync_client
from pbkv.service.cluster.keys import ClusterKeys
from pbkv.service.cluster.outlook import Summaries, encode_outlook
from pbkv.service.convert import ConversionError, forecast_bytes, forecast_of_bytes
from pbkv.service.records import EventRecord, WorkflowEnded, WorkflowStarted, from_payload, payload
from pbkv.service.servicers.wiring import manager_key
from pbkv.service.stores.base import StoreError, TraceStore

# KEYS: lease, seq, stream, outlook stream, base, finished stream. ARGV: holder, base ("":
# leave it), then (event json, forecast bytes, event id, outlook record) quadruples.
APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[1] .. ' is not held by ' .. ARGV[1])
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[5], ARGV[2]) end
local t = redis.call('TIME')
local written = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local out = {}
for i = 3, #ARGV, 4 do
  local s = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[3], s .. '-0', 'e', ARGV[i], 'f', ARGV[i + 1], 'i', ARGV[i + 2],
             'o', ARGV[1])
  redis.call('XADD', KEYS[4], s .. '-0', 'r', ARGV[i + 3], 'f', ARGV[i + 1], 't', written)
  if string.sub(ARGV[i + 3], 1, 4) == '["x"' then
    redis.call('XADD', KEYS[6], s .. '-0', 'r', ARGV[i + 3])
  end
  out[#out + 1] = s
end
return out
"""
_PAGE = 2_000


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One stream entry: the event (its ``seq`` the entry's), its carried forecast, writer."""

    partition: int
    record: EventRecord
    forecast: Forecast | None
    writer: str


def encode_event(e: EventRecord) -> tuple[str, bytes, str]:
    text = json.dumps(
        {"k": e.kind, "t": e.tenant, "w": e.workflow_id, "a": e.at_s, "p": payload(e.event)},
        separators=(",", ":"),
    )
    return text, (forecast_bytes(e.forecast) if e.forecast is not None else b""), e.event_id


def decode_entry(partition: int, entry_id: bytes | str, fields: dict) -> LoggedEvent:
    """A stream entry as read by XRANGE/XREAD; ``StoreError`` names what is wrong."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        seq = int(eid.split("-")[0])
        d = json.loads(fields[b"e"])
        raw_fc = fields.get(b"f", b"")
        fc = forecast_of_bytes(raw_fc) if raw_fc else None
        event = from_payload(d["k"], d["p"])
        eid = fields.get(b"i", b"").decode()
        record = EventRecord(d["t"], d["w"], d["a"], event, seq, forecast=fc, event_id=eid)
        return LoggedEvent(partition, record, fc, fields.get(b"o", b"").decode())
    except (ValueError, KeyError, TypeError, ConversionError) as exc:
        raise StoreError(f"partition {partition} entry {eid}: {exc!r}") from exc


class PartitionLog(TraceStore):
    """A ``TraceStore`` over the partition streams. ``holder(p)`` says which lease value this
    replica holds for partition ``p`` (None: not ours); an event of a partition that is not
    ours, or whose lease moved, fails alone with ``StoreError`` and is not written. Sequence
    numbers count per partition."""

    name = "cluster"

    def __init__(
        self,
        url: str,
        keys: ClusterKeys,
        holder: Callable[[int], str | None],
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self.url, self.keys, self._holder = url, keys, holder
        self._cluster = is_cluster(url)
        try:
            self._redis = sync_client(url, timeout_s)
            self._redis.ping()
        except (*ERRORS, ValueError) as exc:
            raise StoreError(f"cluster {url}: {exc}") from exc
        self._append = self._redis.register_script(APPEND)
        self.summaries = Summaries()  # finished workflows' summaries, by the owner's predictor
        # Per partition this replica writes: running workflow -> its start seq, and the last
        # seq (recorder thread only, after ``adopt`` on the loop while nothing is written).
        self._starts: dict[int, dict[str, int]] = {}
        self._last: dict[int, int] = {}

    def adopt(self, p: int, starts: dict[str, int], last: int) -> None:
        """A take-over rebuilt partition ``p``: its running workflows' starts, its last seq."""
        self._starts[p], self._last[p] = dict(starts), last

    def forget(self, p: int) -> None:
        """Partition ``p`` is not written here any more (lost, handed over)."""
        self._starts.pop(p, None)
        self._last.pop(p, None)

    def _base(self, p: int, batch: list[EventRecord]) -> str:
        starts = self._starts.get(p)
        if starts is None:
            return ""
        ending = {manager_key(e.tenant, e.workflow_id) for e in batch if e.kind == "end"}
        running = [s for w, s in starts.items() if w not in ending]
        return str(min(running, default=self._last[p] + 1))

    def _written(self, p: int, batch: list[EventRecord], seqs: list[int]) -> None:
        starts = self._starts.get(p)
        if starts is None:
            return
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
        k = self.keys
        by_part: dict[int, list[int]] = {}
        for i, e in enumerate(events):
            by_part.setdefault(k.workflow_partition(e.tenant, e.workflow_id), []).append(i)
        out: list[int | StoreError] = [StoreError("not written")] * len(events)
        # One script per partition: pipelined on one server; on a Redis Cluster each is its
        # own call (a partition's keys share one slot; scripts do not pipeline across nodes).
        pipe = None if self._cluster else self._redis.pipeline(transaction=False)
        sent: list[int] = []
        results: list = []
        for p, idx in by_part.items():
            holder = self._holder(p)
            if holder is None:
                for i in idx:
                    out[i] = StoreError(f"workflow partition {p} is not owned by this replica")
                continue
            batch = [events[i] for i in idx]
            args: list[str | bytes] = [holder, self._base(p, batch)]
            for e in batch:
                finished = None
                if e.kind == "end":
                    finished = self.summaries.pop(manager_key(e.tenant, e.workflow_id))
                args.extend((*encode_event(e), encode_outlook(e, finished)))
            sent.append(p)
            keys = [k.lease("p", p), k.seq(p), k.stream(p), k.outlook(p), k.base(p), k.finished(p)]
            if pipe is not None:
                self._append(keys=keys, args=args, client=pipe)
                continue
            try:
                results.append(self._append(keys=keys, args=args))
            except redis.ResponseError as exc:
                results.append(exc)  # fenced: this partition alone fails
            except ERRORS as exc:
                with contextlib.suppress(*ERRORS):  # a failover moved the slot:
                    self._redis.nodes_manager.initialize()  # look the topology up again
                raise StoreError(f"cluster {self.url}: append failed: {exc}") from exc
        if pipe is not None and sent:
            try:
                results = pipe.execute(raise_on_error=False)
            except ERRORS as exc:
                raise StoreError(f"cluster {self.url}: append failed: {exc}") from exc
        for p, result in zip(sent, results, strict=True):
            if isinstance(result, Exception):
                for i in by_part[p]:
                    out[i] = StoreError(f"partition {p}: {result}")
                continue
            seqs = [int(x) for x in result]
            for i, seq in zip(by_part[p], seqs, strict=True):
                out[i] = seq
            self._written(p, [events[i] for i in by_part[p]], seqs)
        return out

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
