"""Test helpers for the cache manager: a scripted predictor and a tiny engine driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from pbkv.cache_manager.events import (
    BlockRemoved,
    BlockStored,
    CachePlan,
    RequestFinished,
    RequestStarted,
    Tier,
)
from pbkv.cache_manager.manager import CacheManager, ManagerConfig
from pbkv.cache_manager.plan_order import eviction_order
from pbkv.predictor.forecast import ObservedStep, Predictor

ENGINE = "e0"


def b(*names: str) -> list[bytes]:
    """Block hashes named by short strings (the scenarios' notation)."""
    return [n.encode() for n in names]


@dataclass
class Harness:
    """Drives one attached engine by hand, with an explicit clock."""

    manager: CacheManager
    now: list[float] = field(default_factory=lambda: [0.0])
    requests: int = 0

    @classmethod
    def make(
        cls,
        policy: str = "pbkv",
        *,
        gpu: int = 8,
        cpu: int = 8,
        predictor: Predictor | None = None,
        **config,
    ) -> Harness:
        now = [0.0]
        m = CacheManager(ManagerConfig(policy=policy, **config), predictor, clock=lambda: now[0])
        m.attach_engine(ENGINE, gpu_blocks=gpu, cpu_blocks=cpu, tokens_per_block=4)
        return cls(m, now)

    def tick(self, t: float) -> None:
        self.now[0] = t

    def run(
        self,
        wf: str | None,
        agent: str | None,
        hashes: tuple[bytes, ...],
        *,
        gpu_hits: int = 0,
        cpu_hits: int = 0,
        store: bool = True,
    ) -> None:
        """One request start to finish: started, its new blocks stored, finished."""
        self.requests += 1
        rid = f"r{self.requests}"
        m = self.manager
        m.on_engine_event(
            RequestStarted(
                ENGINE,
                rid,
                hashes,
                4 * len(hashes),
                gpu_hits,
                cpu_hits,
                wf,
                agent,
                now_s=self.now[0],
            )
        )
        m.check_integrity()
        new = hashes[gpu_hits + cpu_hits :]
        if store and new:
            parent = hashes[gpu_hits + cpu_hits - 1] if gpu_hits + cpu_hits else None
            m.on_engine_event(BlockStored(ENGINE, new, parent, 4, Tier.GPU))
            m.check_integrity()
        m.on_engine_event(RequestFinished(ENGINE, rid, now_s=self.now[0]))
        m.check_integrity()

    def evict(self, *hashes: bytes, tier: Tier = Tier.GPU) -> None:
        self.manager.on_engine_event(BlockRemoved(ENGINE, hashes, tier))
        self.manager.check_integrity()

    def store(self, hashes: tuple[bytes, ...], parent: bytes | None, tier: Tier) -> None:
        self.manager.on_engine_event(BlockStored(ENGINE, hashes, parent, 4, tier))
        self.manager.check_integrity()

    def plan(self) -> CachePlan:
        plan = self.manager.plan(ENGINE)
        self.manager.check_integrity()
        return plan

    def order(self) -> list[bytes]:
        """The engine's full GPU eviction order under the current plan (first out first)."""
        plan = self.plan()
        d = self.manager._engines[ENGINE].directory
        evictable = {b.block_hash: b for b in d if b.evictable}
        lru = sorted(evictable, key=lambda h: (evictable[h].last_access_s, h))
        if plan.fallback_lru:
            return lru
        return [h for h in eviction_order(plan, lru) if h in evictable]


def finish(h: Harness, wf: str, agent: str) -> None:
    """``agent``'s running step of ``wf`` finishes (nothing else observed of it)."""
    h.manager.step_finished(wf, ObservedStep(agent))
