"""The shadow replay step by step: which blocks each simulated pool holds after every observed
batch, what the manager's shadow engine is told, and the estimate's exact figures.

Blocks are 4 tokens, both pools hold 5 blocks (a running request also takes one slot for its
prompt's partial last block); the cost model is ``sim_support.COST`` (1 ms per
computed prompt token, no context term), so saved prefill time is saved tokens x 1 ms.
"""

from __future__ import annotations

import pytest
from sim_support import COST
from support import ScriptedPredictor

from pbkv.cache_manager.manager import CacheManager, ManagerConfig
from pbkv.cache_manager.plan_order import named
from pbkv.engine_adapter.shadow.replay import ShadowReplay, parse_session, session_tag
from pbkv.engine_adapter.shadow.wire import Cleared, DecodedBatch, RemovedBlocks, StoredBlocks
from pbkv.predictor.forecast import ObservedStep

ENGINE = "shadow"


def b(*names: str) -> tuple[bytes, ...]:
    return tuple(n.encode() for n in names)


def stored(hashes, parent: str | None, session: str | None, medium: str = "GPU") -> StoredBlocks:
    return StoredBlocks(
        hashes, None if parent is None else parent.encode(), 4, medium, session, None
    )


class Shadow:
    def __init__(self, policy: str = "pbkv", predictor=None, mode: str = "incremental") -> None:
        self.now = [0.0]
        self.seq = 0
        self.manager = CacheManager(
            ManagerConfig(policy=policy, horizon=2), predictor, clock=lambda: self.now[0]
        )
        self.replay = ShadowReplay(
            self.manager,
            ENGINE,
            gpu_blocks=5,
            tokens_per_block=4,
            cost=COST,
            clock=lambda: self.now[0],
            report_mode=mode,
        )

    def batch(self, *events) -> None:
        self.now[0] += 1.0
        self.replay.on_batch(DecodedBatch(self.seq, self.now[0], tuple(events), 0, 0))
        self.seq += 1
        self.manager.check_integrity()
        self.replay.lru.check_integrity()
        self.replay.plan.check_integrity()

    def finish(self, workflow: str, agent: str) -> None:
        """The orchestrator reports the step finished: its request lets its blocks go."""
        self.manager.step_finished(workflow, ObservedStep(agent))
        self.replay.release_finished()
        self.manager.check_integrity()
        self.replay.lru.check_integrity()
        self.replay.plan.check_integrity()

    def lru(self) -> list[bytes]:
        return self.replay.lru.evictable()  # LRU order, first out first

    def plan_pool(self) -> list[bytes]:
        return self.replay.plan.cached()  # oldest stored first


def test_pbkv_keeps_the_blocks_a_forecast_needs_where_lru_recomputes_them() -> None:
    p = ScriptedPredictor()
    # After w1's first step (A), A is due again next step; after w2's step (B), B is not.
    p.script[("w1", 1)] = ({"A": (0.9, 0.95, 1.0)}, 0.9)
    p.script[("w2", 1)] = ({"B": (0.05, 0.1, None)}, 0.9)
    s = Shadow("pbkv", p)
    m = s.manager
    m.start_workflow("w1", "app")
    m.start_workflow("w2", "app")
    # w1 runs A: the stock engine computes a0 a1 (one BlockStored, tagged by session_id).
    m.step_started("w1", "A")
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "A")))
    assert s.lru() == []  # the request runs until the orchestrator says its step finished
    s.finish("w1", "A")
    assert s.lru() == list(b("a1", "a0"))  # released tail first: a1 goes before a0
    assert s.plan_pool() == list(b("a0", "a1"))
    # The manager's shadow engine was told of the request and its blocks.
    directory = m._engines[ENGINE].directory
    assert directory.gpu_used == 2 and ("w1", "A") in directory.get(b"a0").users
    # w2 runs B: b0 b1; both pools are now full.
    m.step_started("w2", "B")
    s.batch(stored(b("b0", "b1"), None, session_tag("w2", "B")))
    s.finish("w2", "B")
    assert s.lru() == list(b("a1", "a0", "b1", "b0"))
    # w1 runs C: c0 c1. The stock engine evicted a1 a0 (its LRU), and so does the LRU pool;
    # pbkv's plan evicts B's blocks (no consumer expects them) and keeps A's (due next).
    m.step_started("w1", "C")
    s.batch(
        stored(b("c0", "c1"), None, session_tag("w1", "C")), RemovedBlocks(b("a1", "a0"), "GPU")
    )
    s.finish("w1", "C")
    assert s.lru() == list(b("b1", "b0", "c1", "c0"))
    assert set(s.plan_pool()) == set(b("a0", "a1", "c0", "c1"))
    # w1 runs A again over a0 a1 plus a new a2: the stock engine recomputes all three (one
    # BlockStored from the root), the LRU pool agrees; the plan pool hits a0 a1, computes a2.
    m.step_started("w1", "A")
    s.batch(stored(b("a0", "a1", "a2"), None, session_tag("w1", "A")))
    est = s.replay.estimate()
    assert est["observed_computed_blocks"] == 9
    assert est["lru_computed_blocks"] == 9  # calibrated exactly: the LRU pool is the engine
    assert est["calibration_error"] == 0.0
    assert est["pbkv_computed_blocks"] == 7
    assert est["saved_tokens"] == 8
    assert est["saved_prefill_s"] == pytest.approx(0.008)
    assert est["lookup_blocks"] == 9
    assert est["lru_hit_rate"] == 0.0
    assert est["pbkv_hit_rate"] == pytest.approx(2 / 9)
    assert est["manager_errors"] == 0


def test_accesses_are_rebuilt_from_parents_and_merged_per_session() -> None:
    s = Shadow("lru")
    r = s.replay
    # A prompt computed whole: one access of its two blocks.
    s.batch(stored(b("x0", "x1"), None, "w#A"))
    # Incremental report (vLLM's default): a request that hit x0 x1 and computed x2 shows only
    # x2, with parent x1; the parent map rebuilds the whole prompt, so x0 x1 are touched.
    s.batch(stored(b("x2"), "x1", "w#A"))
    assert r.counts.lru.lookup_blocks == 5 and r.counts.lru.hit_blocks == 2
    # kv_cache_report_mode="full": the hit prefix is reported (parent None), then the computed
    # rest; one session's consecutive chains that extend each other are ONE access.
    accesses = r.accesses([stored(b("x0", "x1", "x2"), None, "v#B"), stored(b("x3"), "x2", "v#B")])
    assert [a.chain for a in accesses] == [b("x0", "x1", "x2", "x3")]
    # Two sessions in one batch stay two accesses, even over the same prefix.
    accesses = r.accesses([stored(b("y0"), None, "v#B"), stored(b("y1"), "y0", "u#C")])
    assert [a.chain for a in accesses] == [b("y0"), b("y0", "y1")]
    # A parent the shadow never saw (it started late): the chain starts at the event.
    assert r.accesses([stored(b("z1"), "z0", None)])[0].chain == b("z1")
    assert r.counts.orphan_parents == 1
    # CPU-medium events (an offloading connector's) are counted and skipped.
    assert r.accesses([stored(b("q0"), None, None, medium="CPU")]) == []
    assert r.counts.other_medium_events == 1


def test_a_clear_empties_both_pools_and_a_block_size_mismatch_is_an_error() -> None:
    s = Shadow("lru")
    s.batch(stored(b("a0", "a1"), None, None))
    s.batch(Cleared())
    assert s.replay.lru.cached() == [] and s.replay.plan.cached() == []
    assert s.manager._engines[ENGINE].directory.gpu_used == 0
    bad = StoredBlocks(b("c0"), None, 16, "GPU", None, None)
    with pytest.raises(ValueError, match="block_size 16 differs"):
        s.batch(bad)


def test_session_tags_round_trip() -> None:
    assert parse_session(session_tag("default/w1", "Coder")) == ("default/w1", "Coder")
    assert parse_session("no-separator") == (None, None)
    assert parse_session(None) == (None, None)


def test_the_shadow_engine_stays_out_of_the_measured_figures() -> None:
    """The manager plans for the shadow engine, but its simulated requests and blocks are not
    measurements: hit and cache figures stay empty; the estimate is the shadow's own."""
    s = Shadow("lru")
    s.batch(stored(b("a0", "a1"), None, None))
    s.batch(stored(b("a2"), "a1", None))
    stats = s.manager.stats()
    assert stats.hits.gpu_lookups == 0 and stats.gpu_blocks_cached == 0
    assert stats.directory_blocks == 3  # the manager does know the shadow engine's blocks
    assert s.replay.estimate()["lookup_blocks"] == 5


def test_reuse_reports_are_not_counted_as_computed() -> None:
    """With ``kv_cache_report_mode="full"`` vLLM reports a request's hit prefix as a
    ``BlockStored`` of blocks it holds: that is an access, not a computation."""
    s = Shadow("lru")
    s.batch(stored(b("a0", "a1"), None, "w#A"))
    s.batch(stored(b("a0", "a1"), None, "w#A"), stored(b("a2"), "a1", "w#A"))
    est = s.replay.estimate()
    assert est["observed_computed_blocks"] == 3 == est["lru_computed_blocks"]
    assert est["lookup_blocks"] == 5  # (a0 a1), then (a0 a1 a2) as one access
    # Once the engine evicted a1, a report naming it again is a recomputation.
    s.batch(RemovedBlocks(b("a2", "a1"), "GPU"), stored(b("a1", "a2"), "a0", "w#A"))
    assert s.replay.estimate()["observed_computed_blocks"] == 5


def test_full_reports_tell_a_running_requests_next_block_from_a_new_request() -> None:
    """``kv_cache_report_mode="full"``: every request with a hit prefix opens with its report,
    so a parented event no report opened is a running request's decode block or next chunk."""
    s = Shadow("lru", mode="full")
    s.batch(stored(b("a0", "a1"), None, "w#A"))  # new request, nothing hit
    s.batch(stored(b("a2"), "a1", "w#A"))  # its decode filled a block: a2 only is new
    fig = s.replay.counts.lru
    assert (fig.lookup_blocks, fig.hit_blocks, fig.computed_blocks) == (3, 0, 3)
    # A new request of the same session over a0 a1 a2: report (parent None) + its new block.
    s.batch(stored(b("a0", "a1", "a2"), None, "w#A"), stored(b("a3"), "a2", "w#A"))
    assert (fig.lookup_blocks, fig.hit_blocks, fig.computed_blocks) == (7, 3, 4)
    # The same events read in incremental mode: the decode block's parents count as hits.
    t = Shadow("lru")
    t.batch(stored(b("a0", "a1"), None, "w#A"))
    t.batch(stored(b("a2"), "a1", "w#A"))
    fig = t.replay.counts.lru
    assert (fig.lookup_blocks, fig.hit_blocks, fig.computed_blocks) == (5, 2, 3)
    with pytest.raises(ValueError, match="report_mode must be one of"):
        Shadow("lru", mode="sometimes")


def test_a_running_request_holds_its_blocks_until_its_agent_finishes() -> None:
    s = Shadow("lru")
    m = s.manager
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    m.step_started("w1", "B")  # A and B run side by side
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "A")))
    assert s.replay.lru.free_slots() == 2  # a0 a1 and A's partial last block
    # An untagged request lets go at once; it needs 3 slots and one for its partial block, 2
    # are free, A's are held: its third block finds no room (counted computed all the same).
    s.batch(stored(b("x0", "x1", "x2"), None, None))
    assert s.lru() == list(b("x1", "x0"))
    assert s.replay.counts.lru.computed_blocks == 5
    # B finishing does not end A's request.
    s.finish("w1", "B")
    assert s.lru() == list(b("x1", "x0"))
    # The workflow ending does.
    m.end_workflow("w1")
    s.replay.release_finished()
    assert s.lru() == list(b("x1", "x0", "a1", "a0"))
    assert s.manager._engines[ENGINE].directory.num_requests == 0


def test_a_batch_follows_the_plan_made_before_it_as_the_connector_does() -> None:
    """The connector takes one plan per engine step, at the step's first lookup, before the
    step's own blocks are reported (``PlanApplier.refresh_plan``): every access of a batch
    follows the plan the manager made from the earlier batches, not one that knows its
    step-mates."""
    s = Shadow("pbkv")
    m = s.manager
    s.batch(stored(b("x0", "x1"), None, None))  # untagged: lets go at once
    plan1 = m.plan(ENGINE)
    assert set(plan1.evict_first) == set(b("x0", "x1"))  # no consumer: evict first
    # Batch 2: a request over y0 y1 needs 3 slots (2 free: evicts one), then an untagged z0.
    s.batch(stored(b("y0", "y1"), None, None), stored(b("z0"), None, None))
    assert s.replay._view.plan is plan1  # both followed the plan made before the batch
    assert b"y0" not in named(plan1) and b"z0" not in named(plan1)
    assert set(named(m.plan(ENGINE))) >= set(b("y0", "y1", "z0"))  # the next batch's plan


def test_a_report_of_a_scheduling_attempt_that_failed_is_dropped() -> None:
    """vLLM emits a ``kv_cache_report_mode="full"`` reuse report at every scheduling attempt
    (``KVCacheManager.get_computed_blocks``), also when ``allocate_slots`` then fails and the
    request stays waiting; the next step tries again and reports again. A lone report (no
    block computed) is therefore applied one batch late, and dropped if its session reports
    again in that batch."""
    s = Shadow("lru", mode="full")
    m = s.manager
    fig = s.replay.counts.lru
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "A")))
    s.finish("w1", "A")
    m.step_started("w1", "B")
    # B hits a0 a1 but finds no room: the report only; nothing applied yet.
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "B")))
    assert (fig.lookup_blocks, fig.hit_blocks) == (2, 0) and s.replay._pending
    # The next step tries again: report + its computed block. The first report is dropped.
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "B")), stored(b("b0"), "a1", "w1#B"))
    assert (fig.lookup_blocks, fig.hit_blocks, fig.computed_blocks) == (5, 2, 3)
    assert s.replay.counts.retried_reports == 1 and s.replay.counts.accesses == 2
    assert s.replay.lru.free_slots() == 1  # B holds a0 a1 b0 and its partial block, once
    s.finish("w1", "B")
    # C hits everything (report only) and runs: applied at the next batch, held until done.
    m.step_started("w1", "C")
    s.batch(stored(b("a0", "a1", "b0"), None, session_tag("w1", "C")))
    assert s.replay.counts.accesses == 2
    s.batch(stored(b("x0"), None, None))  # another request's step
    assert (fig.lookup_blocks, fig.hit_blocks) == (9, 5)  # C's 3 hits, then x0
    assert s.replay.counts.retried_reports == 1 and s.replay.counts.accesses == 4
    assert s.lru() == list(b("x0"))  # C still holds a0 a1 b0
    s.finish("w1", "C")
    s.batch()
    assert s.lru() == list(b("x0", "b0", "a1", "a0"))


def test_a_failed_attempt_retried_batches_later_is_taken_back() -> None:
    """A step whose token budget runs out before the waiting queue does not retry the waiting
    request: its retry can come batches after its lone report was applied. A session's new
    access while its request of the same step is held replaces a held lone report: that
    attempt held nothing, its tallies are taken back."""
    s = Shadow("lru", mode="full")
    m = s.manager
    fig = s.replay.counts.lru
    m.start_workflow("w1", "app")
    m.step_started("w1", "A")
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "A")))
    s.finish("w1", "A")
    m.step_started("w1", "B")
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "B")))  # B's attempt: no room
    s.batch(stored(b("x0"), None, None))  # a step without B: its report is applied, held
    assert (fig.lookup_blocks, fig.hit_blocks) == (5, 2)
    assert s.replay.lru.free_slots() == 1  # a0 a1 + a slot held (B), x0 cached
    s.batch(stored(b("a0", "a1"), None, session_tag("w1", "B")), stored(b("b0"), "a1", "w1#B"))
    assert (fig.lookup_blocks, fig.hit_blocks, fig.computed_blocks) == (6, 2, 4)
    c = s.replay.counts
    assert (c.retried_reports, c.repeat_accesses, c.lone_reports) == (1, 1, 1)
    assert len(s.replay._holds) == 1  # B's run only
    s.finish("w1", "B")
    assert s.lru() == list(b("x0", "b0", "a1", "a0"))  # B once: its blocks freed once
