"""Three ``pbkv serve --cluster`` processes on a private Redis: a replay through them decides
what one replica decides; kill -9 of a replica loses no acknowledged event and its workflows
and engines go on at the survivors; a replica paused past its lease writes nothing after."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from cluster_processes import Replica, logged, model, owner_of, replicas

from pbkv.bench.demo_service import _SyncedLink, _SyncedOrchestrator
from pbkv.engine_adapter.replay import ClientOrchestrator
from pbkv.engine_adapter.sim.attach import attach_link
from pbkv.engine_adapter.sim.engine import EngineConfig
from pbkv.engine_adapter.sim.presets import PRESETS
from pbkv.engine_adapter.sim.replay import ReplayConfig, replay
from pbkv.service.client import PbkvClient
from pbkv.service.cluster.keys import ENGINE, WORKFLOW, ClusterKeys
from pbkv.service.cluster.status import read_status
from pbkv.service.engine_client import EngineLinkClient, EngineLinkConfig
from pbkv.training.synth import synthesize

PRESET = PRESETS.create("h100-llama8b")
KEYS = ClusterKeys()  # the defaults pbkv serve --cluster uses
GPU_BLOCKS, CPU_BLOCKS = 160, 480


def workload(seed: int, n: int) -> list:
    return synthesize("dynamic", seed, n, output_tokens=(5, 20), system_tokens=(100, 400))


def hit_rate(engine_target: str, orchestrator_target: str, workflows: list) -> float:
    """Replay ``workflows`` through the service, the simulated engine attached at
    ``engine_target``; every plan pull waits until the service applied what came before."""
    engine_cfg = EngineConfig(gpu_blocks=GPU_BLOCKS, cpu_blocks=CPU_BLOCKS, engine_id="sim-0")
    link_cfg = EngineLinkConfig(
        target=engine_target,
        engine_id="sim-0",
        gpu_blocks=GPU_BLOCKS,
        cpu_blocks=CPU_BLOCKS,
        tokens_per_block=engine_cfg.tokens_per_block,
        max_plan_age_s=None,
    )
    with (
        EngineLinkClient(link_cfg) as link,
        PbkvClient(orchestrator_target, timeout_s=30) as client,
    ):
        assert link.wait_connected(30)
        synced = _SyncedLink(link)
        engine = attach_link(synced, engine_cfg, PRESET.cost)
        orchestrator = ClientOrchestrator(client)
        result = replay(
            engine,
            workflows,
            ReplayConfig(concurrency=4),
            orchestrator=_SyncedOrchestrator(orchestrator, synced),
        )
        assert orchestrator.num_errors == 0, orchestrator.last_error
    e = result.engine
    assert e.lookup_blocks > 1000
    return (e.gpu_hit_blocks + e.cpu_hit_blocks) / e.lookup_blocks


def wait_balanced(url: str, n: int, timeout_s: float = 30.0) -> dict:
    """The cluster status once ``n`` replicas are live and every partition has an owner."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = read_status(url, KEYS)
        shares = [r["workflow_partitions"] for r in status["replicas"]]
        engines = [r["engine_partitions"] for r in status["replicas"]]
        # Every partition owned, each replica some and none above its target ceil(count / n).
        owned = (
            shares
            and min(shares) > 0
            and max(shares) <= -(-KEYS.workflow_partitions // n)
            and max(engines) <= -(-KEYS.engine_partitions // n)
        )
        if status["live_replicas"] == n and status["unowned"] == {WORKFLOW: 0, ENGINE: 0} and owned:
            return status
        assert time.monotonic() < deadline, f"cluster not balanced: {status}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_replay_through_three_replicas_hits_as_one_replica(tmp_path, private_redis) -> None:
    m = model(tmp_path / "model", workload(1, 30))
    workflows = workload(2, 16)
    one = Replica(["--store-path", str(tmp_path / "one.sqlite3"), "--model", str(m)])
    try:
        alone = hit_rate(one.target, one.target, workflows)
    finally:
        one.stop()
    # A long lease: on a loaded test machine a short one may lapse and move partitions
    # mid-replay (correct, but the engine's directory then restarts and the rates differ).
    three = replicas(3, private_redis, "--model", str(m), "--cluster-lease-s", "6")
    try:
        wait_balanced(private_redis, 3)
        # The engine attaches to the first replica, the orchestrator calls the other two:
        # nearly every call is forwarded, workflows are owned by all three.
        clustered = hit_rate(three[0].target, f"{three[1].target},{three[2].target}", workflows)
        shares = [r["workflow_partitions"] for r in read_status(private_redis, KEYS)["replicas"]]
        assert sum(shares) == 16 and max(shares) <= 6  # still balanced, each owned once
    finally:
        for r in three:
            r.stop()
    print(f"hit rate: one replica {alone:.4f}, three replicas {clustered:.4f}")
    assert abs(alone - clustered) <= 0.01


def drive(client: PbkvClient, workflows: list, acked: list, step: int) -> None:
    """Step ``step`` of every workflow (start at 0), each answer kept in ``acked``."""
    for w in workflows:
        wid, agent = w.workflow_id, w.steps[step % len(w.steps)].agent
        if step == 0:
            acked.append((wid, "start", client.start_workflow(wid, app=w.app)))
        acked.append((wid, "step_started", client.step_started(wid, agent)))
        seq, _ = client.step_finished_with_seq(wid, agent, output_text="done")
        acked.append((wid, "step_finished", seq))


def engine_events(i: int) -> list:
    from pbkv.cache_manager.events import BlockStored, RequestStarted

    h = bytes([i % 251]) * 8
    return [
        BlockStored("sim-k", (h,), None, 16),
        RequestStarted("sim-k", f"r{i}", (h,), 16, num_gpu_hit_blocks=1),
    ]


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_event_and_work_moves_on(tmp_path, private_redis) -> None:
    train = workload(1, 30)
    m = model(tmp_path / "model", train)
    procs = replicas(3, private_redis, "--model", str(m), "--cluster-lease-s", "1.5")
    try:
        status = wait_balanced(private_redis, 3)
        address = {r["replica"]: r["address"] for r in status["replicas"]}
        # The victim owns the engine's partition; it is first in every client's target list.
        victim_id = owner_of(private_redis, KEYS, ENGINE, KEYS.engine_partition("sim-k")).rsplit(
            ":", 1
        )[0]
        victim = next(p for p in procs if p.target == address[victim_id])
        targets = ",".join([victim.target, *(p.target for p in procs if p is not victim)])
        link = EngineLinkClient(
            EngineLinkConfig(
                target=targets,
                engine_id="sim-k",
                gpu_blocks=64,
                cpu_blocks=64,
                max_plan_age_s=1.0,
            )
        )
        client = PbkvClient(targets, timeout_s=15)
        assert link.wait_connected(20)
        workflows = workload(3, 24)
        acked: list = []
        drive(client, workflows, acked, 0)
        ids = [w.workflow_id for w in workflows]
        before = {wid: client.forecast(wid) for wid in ids}
        orphans = [
            wid
            for wid in ids
            if owner_of(
                private_redis, KEYS, WORKFLOW, KEYS.workflow_partition("default", wid)
            ).startswith(victim_id + ":")
        ]
        assert orphans and all(before[wid] is not None for wid in orphans)
        for i in range(5):
            link.send_many(engine_events(i))
        plans_before = link.stats().plans_received

        # The engine keeps serving throughout: a sampler sends its events and reads its plan
        # every 50 ms (a real engine never waits on pbkv).
        samples: list[tuple[float, bool, int, int]] = []
        stop = threading.Event()

        def engine_loop() -> None:
            i = 5
            while not stop.is_set():
                link.send_many(engine_events(i))
                st = link.stats()
                plan = link.latest_plan()
                samples.append((time.monotonic(), plan is None, st.connects, st.plans_received))
                i += 1
                time.sleep(0.05)

        os.kill(victim.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        sampler = threading.Thread(target=engine_loop, daemon=True)
        sampler.start()
        # 1. The victim's workflows answer from a survivor with the same forecast state.
        after = {wid: client.forecast(wid) for wid in orphans}
        recovered_s = time.monotonic() - t0
        assert after == {wid: before[wid] for wid in orphans}
        assert recovered_s <= 5.0, recovered_s
        # 2. Every workflow goes on (the client moves off the dead replica by itself).
        drive(client, workflows, acked, 1)
        for wid in ids:
            acked.append((wid, "end", client.end_workflow(wid)))
        # 3. The engine ran on LRU while its plan was stale (no plan: LRU), re-attached to a
        #    survivor and gets plans again.
        deadline = time.monotonic() + 20
        while not (samples and samples[-1][2] >= 2 and samples[-1][3] > plans_before):
            assert time.monotonic() < deadline, link.stats()
            time.sleep(0.1)
        stop.set()
        sampler.join(5)
        lru = [t - t0 for t, no_plan, _, _ in samples if no_plan]
        replanned = next(t - t0 for t, _, c, n in samples if c >= 2 and n > plans_before)
        assert lru and min(lru) < replanned
        # A fresh plan on demand (the last one may be older than max_plan_age_s by now when
        # the machine is loaded): one more event, and the survivor answers it with a plan.
        link.send_many(engine_events(len(samples) + 5))
        assert link.sync(20), link.stats()
        assert link.latest_plan() is not None
        link.close()
        client.close()
        # 4. Redis holds every acknowledged event exactly once.
        entries = logged(private_redis, KEYS)
        in_log = [(e.record.workflow_id, e.record.kind, e.record.seq) for e in entries]
        mine = [x for x in in_log if x[0] in set(ids)]
        assert sorted(mine) == sorted(acked)
        print(
            f"failover: forecasts back after {recovered_s:.2f} s, engine on LRU from "
            f"{min(lru):.2f} s, plans again after {replanned:.2f} s"
        )
    finally:
        for r in procs:
            r.stop()


@pytest.mark.slow
def test_a_replica_paused_past_its_lease_writes_nothing_afterwards(private_redis) -> None:
    procs = replicas(3, private_redis, "--cluster-lease-s", "1.0")
    try:
        status = wait_balanced(private_redis, 3)
        victim = procs[0]
        victim_id = next(r["replica"] for r in status["replicas"] if r["address"] == victim.target)
        old = {
            p: h
            for p in range(KEYS.workflow_partitions)
            if (h := owner_of(private_redis, KEYS, WORKFLOW, p)).startswith(victim_id + ":")
        }
        ids = [f"w{i}" for i in range(2000) if KEYS.workflow_partition("default", f"w{i}") in old][
            :8
        ]
        others = ",".join(p.target for p in procs[1:])
        with PbkvClient(others, timeout_s=15) as client:
            for wid in ids:  # forwarded to the victim, written under its leases
                client.start_workflow(wid, app="app")
            os.kill(victim.proc.pid, signal.SIGSTOP)
            try:
                # 1. Past its lease the survivors take every partition the victim held.
                deadline = time.monotonic() + 15
                while any(
                    owner_of(private_redis, KEYS, WORKFLOW, p) in (h, None) for p, h in old.items()
                ):
                    assert time.monotonic() < deadline, "partitions not taken over"
                    time.sleep(0.1)
                for wid in ids:
                    client.step_started(wid, "coder")
                # 2. Calls sent straight to the victim wait in its socket while it is paused.
                direct = PbkvClient(victim.target, timeout_s=10)
                results: list = []
                sender = threading.Thread(
                    target=lambda: results.extend(_try(direct, wid) for wid in ids)
                )
                sender.start()
                time.sleep(0.3)
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            sender.join(60)
            direct.close()
            time.sleep(3.0)  # the resumed replica runs its loop for three lease lengths
            for wid in ids:  # the workflows go on
                client.step_started(wid, "tester")
                client.step_finished(wid, "tester")
        # 3. Redis: under its old leases the victim wrote the starts and nothing more; every
        #    later event of those partitions carries a newer token.
        entries = [e for e in logged(private_redis, KEYS) if e.partition in old]
        by_old = [
            (e.record.workflow_id, e.record.kind) for e in entries if e.writer in old.values()
        ]
        assert sorted(by_old) == sorted((wid, "start") for wid in ids)
        for e in entries:
            if e.writer not in old.values():
                assert int(e.writer.rsplit(":", 1)[1]) > int(old[e.partition].rsplit(":", 1)[1])
        # The calls sent straight to it were refused, or forwarded to the new owners.
        assert len(results) == len(ids)
        assert all(r in ("ok", "UNAVAILABLE", "FAILED_PRECONDITION") for r in results), results
        print(f"calls straight to the resumed replica: {results}")
    finally:
        for r in procs:
            r.stop()


def _try(client: PbkvClient, wid: str) -> str:
    from pbkv.service.client import PbkvError

    try:
        client.step_finished(wid, "coder")
        return "ok"
    except PbkvError as exc:
        return exc.code.name


@pytest.mark.slow
def test_sigterm_hands_partitions_over_without_waiting_for_expiry(private_redis) -> None:
    # A 30 s lease: anything the leaving replica held must be released, not expired.
    procs = replicas(2, private_redis, "--cluster-lease-s", "30")
    try:
        status = wait_balanced(private_redis, 2, timeout_s=120)
        leaving = procs[0]
        leaving_id = next(
            r["replica"] for r in status["replicas"] if r["address"] == leaving.target
        )
        with PbkvClient(procs[1].target, timeout_s=30) as client:
            ids = [f"w{i}" for i in range(12)]
            for wid in ids:
                client.start_workflow(wid, app="app")
            t0 = time.monotonic()
            leaving.proc.terminate()
            assert leaving.proc.wait(30) == 0
            # 1. Its leases are gone at once (released), its membership too.
            for kind in (WORKFLOW, ENGINE):
                for p in range(KEYS.count(kind)):
                    holder = owner_of(private_redis, KEYS, kind, p)
                    assert holder is None or not holder.startswith(leaving_id + ":")
            assert [r["replica"] for r in read_status(private_redis, KEYS)["replicas"]] == [
                r["replica"] for r in status["replicas"] if r["replica"] != leaving_id
            ]
            # 2. The survivor takes everything well within one lease, and every workflow
            #    goes on there.
            wait_balanced(private_redis, 1, timeout_s=25)
            assert time.monotonic() - t0 < 30
            for wid in ids:
                client.end_workflow(wid)
    finally:
        for r in procs:
            r.stop()
