"""Engine-id collisions and churn, and long workflows, against ``pbkv serve``: one stream per
engine id (the older ones end ABORTED), released engines free their memory, a workflow's
step cost and memory stay flat; health answers within 100 ms throughout."""

from __future__ import annotations

import json
import queue
import threading
import time

import grpc
import pytest
from adversarial_support import HealthProbe, assert_acked_intact

from pbkv.service.client import PbkvClient
from pbkv.v1 import pbkv_pb2 as pb
from pbkv.v1 import pbkv_pb2_grpc as pb_grpc


def attach(channel, engine_id: str, out: queue.Queue):
    out.put(
        pb.EngineMessage(
            hello=pb.AttachRequest(engine_id=engine_id, gpu_blocks=256, tokens_per_block=16)
        )
    )
    return pb_grpc.EngineLinkStub(channel).Attach(iter(out.get, None), timeout=20)


def stored(tag: int, n: int = 16) -> pb.EngineMessage:
    return pb.EngineMessage(
        events=[
            pb.EngineEvent(
                block_stored=pb.BlockStored(
                    block_hashes=[tag.to_bytes(4, "big") + i.to_bytes(28, "big") for i in range(n)],
                    tokens_per_block=16,
                    tier=pb.TIER_GPU,
                )
            )
        ]
    )


def attach_and_leave(channel, engine_id: str, tag: int, blocks: int) -> None:
    """One engine's life: attach, store ``blocks`` blocks, disconnect."""
    out: queue.Queue = queue.Queue()
    plans = attach(channel, engine_id, out)
    next(plans)
    out.put(stored(tag, blocks))
    out.put(None)
    for _ in plans:
        pass


def service_stats(target: str) -> dict:
    with PbkvClient(target) as client:
        return client.stats()


def test_colliding_engine_ids(served) -> None:
    with HealthProbe(served) as probe, grpc.insecure_channel(served.target) as ch:
        streams = []
        for k in range(8):  # eight pods claim one id, one after the other
            out: queue.Queue = queue.Queue()
            plans = attach(ch, "shared", out)
            next(plans)
            out.put(stored(k))
            streams.append((out, plans))
        last_out, last_plans = streams[-1]
        last_out.put(pb.EngineMessage(sync=1))
        while next(last_plans).sync < 1:
            pass
        for out, plans in streams[:-1]:
            out.put(stored(99))  # late messages of a replaced stream
            with pytest.raises(grpc.RpcError) as info:
                for _ in plans:
                    pass
            assert info.value.code() == grpc.StatusCode.ABORTED
        stats = service_stats(served.target)
        assert stats["directory_blocks"] == 16  # the survivor's blocks only
        assert stats["service"]["attached_streams"] == 1
        last_out.put(None)
        probe.check()


def test_engine_id_churn_keeps_memory_flat(served) -> None:
    def cycles(first: int, n: int) -> None:
        with grpc.insecure_channel(served.target) as ch:
            for i in range(first, first + n):
                attach_and_leave(ch, f"pod-{i}", i, 64)

    with HealthProbe(served) as probe:
        cycles(0, 100)  # warm-up
        time.sleep(0.3)
        before = served.rss_mb()
        threads = [threading.Thread(target=cycles, args=(1000 * (t + 1), 100)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        deadline = time.monotonic() + 10
        while service_stats(served.target)["service"]["engines"] and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = service_stats(served.target)
        assert (stats["service"]["engines"], stats["directory_blocks"]) == ([], 0)
        assert served.rss_mb() - before < 10  # MB, for 300 engines x 64 blocks come and gone
        probe.check()


def long_workflow(target: str, wid: str, steps: int, text: str) -> list[float]:
    """A workflow of ``steps`` steps over unary calls; the time of each step."""
    times = []
    with PbkvClient(target, tenant="long", timeout_s=20) as client:
        client.start_workflow(wid, "app")
        for s in range(steps):
            t0 = time.perf_counter()
            client.step_started(wid, "agent")
            client.step_finished(wid, "agent", step_index=s, output_text=text)
            times.append(time.perf_counter() - t0)
        client.end_workflow(wid)
    return times


def test_a_long_workflow_with_large_outputs_stays_bounded(served) -> None:
    with HealthProbe(served) as probe:
        before = served.rss_mb()
        long_workflow(served.target, "big-outputs", 200, "x" * (512 << 10))  # 100 MiB in all
        # one output (512 KiB) is kept, not 200 of them (100 MiB)
        assert served.rss_mb() - before < 40
        probe.check()
    assert_acked_intact(served)


@pytest.mark.slow
def test_soak_long_workflows_and_churn(served) -> None:
    """A 3,000-step workflow while engines churn: step time flat, memory flat."""
    with HealthProbe(served) as probe:
        stop = threading.Event()

        def churn() -> None:
            with grpc.insecure_channel(served.target) as ch:
                i = 0
                while not stop.is_set():
                    attach_and_leave(ch, f"soak-{i}", i, 32)
                    i += 1

        thread = threading.Thread(target=churn, daemon=True)
        thread.start()
        rss0 = served.rss_mb()
        times = long_workflow(served.target, "soak", 3_000, "y" * 1024)
        stop.set()
        thread.join(60)
        early, late = sorted(times[10:510]), sorted(times[-500:])
        assert late[250] < 1.5 * early[250] + 0.002, json.dumps([early[250], late[250]])
        assert served.rss_mb() - rss0 < 20
        probe.check()
    assert_acked_intact(served)
