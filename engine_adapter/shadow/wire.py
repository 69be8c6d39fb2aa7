"""vLLM's KV-event wire format, decoded without importing vLLM.

A stock vLLM started with ``--kv-events-config '{"enable_kv_cache_events": true, "publisher":
"zmq", "endpoint": "tcp://*:5557"}'`` publishes on a ZMQ PUB socket one three-frame message per
engine step: ``(topic, seq, payload)``. ``seq`` is an 8-byte big-endian counter starting at 0;
``payload`` is msgpack (msgspec) of ``KVEventBatch``, an array ``[ts, events, dp_rank?]``
whose events are maps tagged by ``"type"``::

    BlockStored      block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
                     lora_name, extra_keys?, group_idx?, ..., session_id?
    BlockRemoved     block_hashes, medium, group_idx?, ...
    AllBlocksCleared (no fields)

(``vllm/distributed/kv_events.py``, vLLM 0.32). SGLang's publisher (``--kv-events-config``,
``sglang/srt/disaggregation/kv_events.py``) sends the same batches with each event as an
array ``["BlockStored", hashes, parent, token_ids, block_size, lora_id]``; both forms decode.
Block hashes are 64-bit ints by default (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``) or the
raw hash bytes; both become ``bytes`` here (an int as 8 big-endian bytes). Fields this module
does not name are ignored, so newer publishers that add fields still decode; an event of an
unknown type is counted and skipped.

Contract: ``decode_batch`` either returns a ``DecodedBatch`` within the caps of
``WireLimits`` or raises ``WireError`` naming what is wrong; it never returns part of a bad
batch except for skipped unknown event types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

SEQ_BYTES = 8
END_SEQ = -1  # the replay socket's end-of-stream marker (signed)
MEDIUM_GPU = "GPU"


class WireError(ValueError):
    """A message that is not a well-formed KV-event batch (the text names what is wrong)."""


class _WireEvent(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class WireBlockStored(_WireEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None
    session_id: str | None = None


class WireBlockRemoved(_WireEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None
    group_idx: int | None = None


class WireAllBlocksCleared(_WireEvent, tag="AllBlocksCleared"):
    pass


WireEvent = WireBlockStored | WireBlockRemoved | WireAllBlocksCleared


# The array form (``array_like=True``): ``["BlockStored", hashes, parent, ...]``, what SGLang's
# publisher and vLLM releases before the map form send.
class _ArrayEvent(msgspec.Struct, array_like=True, omit_defaults=True):
    pass


class ArrayBlockStored(_ArrayEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None


class ArrayBlockRemoved(_ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None


class ArrayAllBlocksCleared(_ArrayEvent, tag="AllBlocksCleared"):
    pass


ArrayEvent = ArrayBlockStored | ArrayBlockRemoved | ArrayAllBlocksCleared


class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]
    data_parallel_rank: int | None = None


@dataclass(frozen=True, slots=True)
class WireLimits:
    max_events_per_batch: int = 4_096
    max_blocks_per_event: int = 16_384
    max_block_hash_bytes: int = 128
    max_topic_bytes: int = 256

    def __post_init__(self) -> None:
        for name in (
            "max_events_per_batch",
            "max_blocks_per_event",
            "max_block_hash_bytes",
            "max_topic_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"WireLimits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class StoredBlocks:
    """``BlockStored``: hashes in chain order, the first one's parent is ``parent``."""

    hashes: tuple[bytes, ...]
    parent: bytes | None
    block_size: int
    medium: str
    session_id: str | None
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class RemovedBlocks:
    hashes: tuple[bytes, ...]
    medium: str


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = StoredBlocks | RemovedBlocks | Cleared


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    seq: int
    ts: float
    events: tuple[Event, ...]
    data_parallel_rank: int | None
    unknown_events: int  # events of a type this module does not know, skipped


_batch_decoder = msgspec.msgpack.Decoder(_Batch)
_kind_decoder = msgspec.msgpack.Decoder(dict[str, Any] | list[Any])
_event_decoder = msgspec.msgpack.Decoder(WireEvent)
_array_decoder = msgspec.msgpack.Decoder(ArrayEvent)
KNOWN_TYPES = ("BlockStored", "BlockRemoved", "AllBlocksCleared")


def parse_seq(frame: bytes) -> int:
    if len(frame) != SEQ_BYTES:
        raise WireError(f"sequence frame has {len(frame)} bytes, expected {SEQ_BYTES}")
    return int.from_bytes(frame, "big", signed=True)


def decode_message(frames: list[bytes], topic: bytes, limits: WireLimits) -> DecodedBatch:
    """One ``(topic, seq, payload)`` message from the PUB (or replay) socket."""
    if len(frames) != 3:
        raise WireError(f"expected 3 frames (topic, seq, payload), got {len(frames)}")
    got_topic, seq_frame, payload = frames
    if len(got_topic) > limits.max_topic_bytes or not got_topic.startswith(topic):
        raise WireError(f"topic {got_topic[:64]!r} does not match the subscribed {topic!r}")
    return decode_batch(parse_seq(seq_frame), payload, limits)


def decode_batch(seq: int, payload: bytes, limits: WireLimits) -> DecodedBatch:
    if seq < 0:
        raise WireError(f"sequence number {seq} is negative")
    try:
        raw = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"payload is not a KVEventBatch: {exc}") from None
    if len(raw.events) > limits.max_events_per_batch:
        raise WireError(
            f"batch {seq} has {len(raw.events)} events, over the cap of "
            f"{limits.max_events_per_batch}"
        )
    events: list[Event] = []
    unknown = 0
    for i, item in enumerate(raw.events):
        try:
            shape = _kind_decoder.decode(item)
        except msgspec.DecodeError as exc:
            raise WireError(f"batch {seq} event {i} is not a map or an array: {exc}") from None
        is_map = isinstance(shape, dict)
        kind = shape.get("type") if is_map else (shape[0] if shape else None)
        if kind not in KNOWN_TYPES:
            unknown += 1
            continue
        try:
            ev = (_event_decoder if is_map else _array_decoder).decode(item)
        except msgspec.DecodeError as exc:
            raise WireError(f"batch {seq} event {i} ({kind}): {exc}") from None
        events.append(_convert(ev, seq, i, limits))
    return DecodedBatch(seq, raw.ts, tuple(events), raw.data_parallel_rank, unknown)


def block_hash_bytes(value: int | bytes, where: str, limits: WireLimits) -> bytes:
    """A published hash as bytes: an int (vLLM's default 64-bit form) as 8 big-endian bytes."""
    if isinstance(value, int):
        if not 0 <= value < 1 << 64:
            raise WireError(f"{where}: integer block hash {value} is not a 64-bit unsigned value")
        return value.to_bytes(8, "big")
    if not value or len(value) > limits.max_block_hash_bytes:
        raise WireError(
            f"{where}: block hash of {len(value)} bytes (1..{limits.max_block_hash_bytes})"
        )
    return bytes(value)


def _hashes(values: list[int | bytes], where: str, limits: WireLimits) -> tuple[bytes, ...]:
    if len(values) > limits.max_blocks_per_event:
        raise WireError(
            f"{where}: {len(values)} block hashes, over the cap of {limits.max_blocks_per_event}"
        )
    return tuple(block_hash_bytes(v, where, limits) for v in values)


def _convert(ev: WireEvent | ArrayEvent, seq: int, i: int, limits: WireLimits) -> Event:
    where = f"batch {seq} event {i}"
    match ev:
        case WireBlockStored() | ArrayBlockStored():
            if ev.block_size <= 0:
                raise WireError(f"{where}: block_size must be > 0, got {ev.block_size}")
            parent = (
                None
                if ev.parent_block_hash is None
                else block_hash_bytes(ev.parent_block_hash, where, limits)
            )
            return StoredBlocks(
                _hashes(ev.block_hashes, where, limits),
                parent,
                ev.block_size,
                ev.medium or MEDIUM_GPU,
                getattr(ev, "session_id", None),
                ev.lora_name,
            )
        case WireBlockRemoved() | ArrayBlockRemoved():
            return RemovedBlocks(_hashes(ev.block_hashes, where, limits), ev.medium or MEDIUM_GPU)
        case _:
            return Cleared()
