"""The predictor's forecast cache changes nothing the manager does: one replayed workload
(interleaved workflows of one app, some ending while others run, requests on one engine)
through a manager whose markov predictor caches forecasts and one whose predictor computes
every forecast afresh gives the same forecasts, plans and stats at every step."""

from __future__ import annotations

from cm_helpers import ENGINE, Harness

from pbkv.predictor.baselines import MarkovPredictor
from pbkv.predictor.forecast import ObservedStep
from pbkv.predictor.history import HistoryStats
from pbkv.predictor.registry import PREDICTORS
from pbkv.trace import Segment, Step, Workflow

AGENTS = ("plan", "code", "test", "review", "write")


class Counted(MarkovPredictor):
    """The markov predictor, counting the forecasts it computes (not from its cache)."""

    computed = 0

    def _agents_confidence(self, *args):
        self.computed += 1
        return super()._agents_confidence(*args)


class Uncached(MarkovPredictor):
    def _forecast_key(self, rounds, candidates, horizon):
        return None


def replay(predictor) -> list:
    h = Harness.make("pbkv", gpu=12, cpu=12, predictor=predictor)
    m = h.manager
    slots = {s: (f"w{s}-0", 0) for s in range(6)}  # slot -> (workflow id, steps done)
    for wid, _ in slots.values():
        m.start_workflow(wid, "app", now_s=0.0)
    seen: list = []
    for t in range(1, 240):
        h.tick(float(t))
        slot = (t * 7) % 6
        wid, done = slots[slot]
        if done == 5 + slot % 3:  # ends; the next workflow of the slot starts
            m.end_workflow(wid, now_s=float(t))
            wid, done = f"w{slot}-{t}", 0
            m.start_workflow(wid, "app", now_s=float(t))
        agent = AGENTS[(done * (slot % 3 + 2) + t // 50) % 5]
        m.step_started(wid, agent, now_s=float(t))
        prompt = (b"sys", f"{agent}".encode(), f"{wid}-{done}".encode())
        h.run(wid, agent, prompt, gpu_hits=1)
        seen.append(m.step_finished(wid, ObservedStep(agent, end_s=float(t))))
        slots[slot] = (wid, done + 1)
        seen.append(h.plan())
        gpu = m._engines[ENGINE].directory
        while gpu.gpu_used > 8:  # the engine evicts as the plan says (then LRU)
            h.evict(h.order()[0])
    seen.append(m.stats())
    return seen


def test_a_replayed_workload_is_planned_identically_with_and_without_the_cache() -> None:
    train = [
        Workflow(
            f"t{i}",
            "app",
            tuple(Step(AGENTS[(s * (i + 1)) % 5], (Segment("new", 8),), 8) for s in range(8)),
        )
        for i in range(6)
    ]
    trained = PREDICTORS.create("markov", workflows=train)
    cached = Counted(HistoryStats.from_json(trained.stats.to_json()), trained.order)
    reference = Uncached(HistoryStats.from_json(trained.stats.to_json()), trained.order)
    a, b = replay(cached), replay(reference)
    assert len(a) == 2 * 239 + 1
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x == y, i
    forecasts = [f for f in a[:-1:2]]
    assert all(f is not None and f.agents for f in forecasts)
    assert any(p.evict_first or p.prefetch or p.offload for p in a[1:-1:2])  # plans say things
    assert len(forecasts) == 239 and cached.computed == 176  # 63 from the cache
