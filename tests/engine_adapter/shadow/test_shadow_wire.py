"""Decoding vLLM's KV-event stream: batches published by vLLM's own ``ZmqEventPublisher``
(the real wire format) reach ``KvEventSubscriber`` decoded; late joiners catch up from the
replay socket; sequence gaps and malformed messages are counted, never fatal."""

from __future__ import annotations

import time

import msgspec
import pytest
import zmq

from pbkv.engine_adapter.shadow.subscriber import KvEventSubscriber, SubscriberConfig
from pbkv.engine_adapter.shadow.wire import (
    Cleared,
    RemovedBlocks,
    StoredBlocks,
    WireError,
    WireLimits,
    decode_batch,
)

PUB, REPLAY, RAW = 5600, 5601, 5602


def wait_for(sub: KvEventSubscriber, n: int, timeout_s: float = 20.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got.extend(sub.drain())
        time.sleep(0.02)
    return got


@pytest.fixture
def kv_events(vllm_available):
    from vllm.distributed import kv_events

    return kv_events


def stored_event(kv_events, hashes, parent, session=None):
    return kv_events.BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=list(range(16 * len(hashes))),
        block_size=16,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        group_idx=0,
        session_id=session,
    )


def test_batches_from_vllms_publisher_decode_and_a_late_subscriber_catches_up(kv_events):
    pub = kv_events.ZmqEventPublisher(
        0, endpoint=f"tcp://*:{PUB}", replay_endpoint=f"tcp://*:{REPLAY}", topic="kv"
    )
    sub = KvEventSubscriber(
        SubscriberConfig(
            f"tcp://127.0.0.1:{PUB}", f"tcp://127.0.0.1:{REPLAY}", "kv", replay_timeout_s=5.0
        )
    )
    try:
        # Published before anyone listens: lost to PUB/SUB, kept in the replay buffer.
        pub.publish(kv_events.KVEventBatch(ts=1.0, events=[stored_event(kv_events, [7, 8], None)]))
        time.sleep(0.5)
        sub.start()
        time.sleep(0.5)  # ZMQ's slow joiner: let the subscription reach the publisher
        big = (1 << 64) - 1  # vLLM's int hashes are 64-bit unsigned
        pub.publish(
            kv_events.KVEventBatch(
                ts=2.0,
                events=[
                    stored_event(kv_events, [9, big], 8, session="default/w1#Coder"),
                    kv_events.BlockRemoved(block_hashes=[7], medium="GPU", group_idx=0),
                    kv_events.AllBlocksCleared(),
                ],
            )
        )
        got = wait_for(sub, 2)
    finally:
        sub.stop()
        pub.shutdown()
    assert [g.seq for g in got] == [0, 1]  # batch 0 came from the replay socket
    assert sub.counts["replayed_batches"] == 1 and sub.counts["lost_batches"] == 0
    first, second = got
    assert first.events == (
        StoredBlocks(((7).to_bytes(8, "big"), (8).to_bytes(8, "big")), None, 16, "GPU", None, None),
    )
    assert second.ts == 2.0 and second.data_parallel_rank == 0
    assert second.events == (
        StoredBlocks(
            ((9).to_bytes(8, "big"), b"\xff" * 8),
            (8).to_bytes(8, "big"),
            16,
            "GPU",
            "default/w1#Coder",
            None,
        ),
        RemovedBlocks(((7).to_bytes(8, "big"),), "GPU"),
        Cleared(),
    )


def test_gaps_restarts_and_malformed_messages_are_counted(kv_events, caplog):
    """A raw PUB socket plays a publisher that drops batches, restarts and sends junk; the
    payloads are vLLM's own encoding of real ``KVEventBatch``es."""
    encode = msgspec.msgpack.Encoder().encode

    def payload(hashes):
        return encode(
            kv_events.KVEventBatch(ts=0.0, events=[stored_event(kv_events, hashes, None)])
        )

    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.bind(f"tcp://127.0.0.1:{RAW}")
    sub = KvEventSubscriber(SubscriberConfig(f"tcp://127.0.0.1:{RAW}"))
    try:
        sub.start()
        time.sleep(0.5)
        for frames in (
            [b"", (0).to_bytes(8, "big"), payload([1])],
            [b"", (1).to_bytes(8, "big"), payload([2])],
            [b"", (4).to_bytes(8, "big"), payload([5])],  # 2 and 3 never arrive
            [b"", (5).to_bytes(8, "big"), b"\x93not msgpack"],  # junk payload
            [b"", b"\x00\x01"],  # two frames
            [b"", (0).to_bytes(8, "big"), payload([9])],  # the publisher restarted
        ):
            raw.send_multipart(frames)
        got = wait_for(sub, 5)
    finally:
        sub.stop()
        raw.close(linger=0)
    assert [g.seq for g in got] == [0, 1, 4, 0, 0]
    assert got[3].events == (Cleared(),)  # the restart empties the shadow's pools
    assert sub.counts["gaps"] == 1 and sub.counts["lost_batches"] == 2
    assert sub.counts["restarts"] == 1 and sub.counts["malformed"] == 2
    # One log line for the first bad message, the second one throttled.
    lines = [r.getMessage() for r in caplog.records if "KV-event message" in r.getMessage()]
    assert len(lines) == 1 and "not a KVEventBatch" in lines[0]


def test_caps_and_bad_values_are_errors_naming_the_field(kv_events):
    encode = msgspec.msgpack.Encoder().encode
    many = encode(kv_events.KVEventBatch(ts=0.0, events=[kv_events.AllBlocksCleared()] * 5))
    with pytest.raises(WireError, match="5 events, over the cap of 4"):
        decode_batch(0, many, WireLimits(max_events_per_batch=4))
    wide = encode(kv_events.KVEventBatch(ts=0.0, events=[stored_event(kv_events, [1, 2, 3], None)]))
    with pytest.raises(WireError, match="3 block hashes, over the cap of 2"):
        decode_batch(0, wide, WireLimits(max_blocks_per_event=2))
    negative = encode(kv_events.KVEventBatch(ts=0.0, events=[stored_event(kv_events, [-1], None)]))
    with pytest.raises(WireError, match="not a 64-bit unsigned"):
        decode_batch(0, negative, WireLimits())
    # An event type this decoder does not know is skipped and counted, the rest decodes.
    unknown = encode(
        [0.0, [{"type": "BlockPinned", "block_hashes": [1]}, {"type": "AllBlocksCleared"}]]
    )
    batch = decode_batch(3, unknown, WireLimits())
    assert batch.events == (Cleared(),) and batch.unknown_events == 1


def test_array_form_events_decode_like_map_form_ones():
    """SGLang's publisher (and vLLM before the map form) encodes each event as an array
    ``[tag, fields...]`` (``array_like=True``); SGLang is not installed here, so the batch is
    written in that layout by hand."""
    payload = msgspec.msgpack.encode(
        [
            5.0,
            [
                ["BlockStored", [11, 12], None, list(range(32)), 16, None],
                ["BlockRemoved", [11]],
                ["AllBlocksCleared"],
            ],
        ]
    )
    batch = decode_batch(7, payload, WireLimits())
    assert batch.events == (
        StoredBlocks(
            ((11).to_bytes(8, "big"), (12).to_bytes(8, "big")), None, 16, "GPU", None, None
        ),
        RemovedBlocks(((11).to_bytes(8, "big"),), "GPU"),
        Cleared(),
    )
