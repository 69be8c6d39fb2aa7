"""``pbkv bench planner``: the cost of scoring + planning per step event, at scale.

Builds one engine's directory with ``--blocks`` cached GPU blocks used by ``--workflows``
active workflows (each with a few agents; every (app, agent) has a shared system prompt), then
replays step events on random workflows and times, per event, what the service does on the hot
path: ``step_started`` + the request's engine events + ``step_finished`` (forecast from a table
predictor, so the predictor's own cost is left out) + ``plan()``. Reports p50 / p99 / max in ms
over ``--events`` events, single thread.

    python -m pbkv.bench.planner                     # 100,000 blocks, 1,000 workflows
    python -m pbkv.bench.planner --policy kvflow --events 500
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.cache_manager.events import BlockStored, RequestFinished, RequestStarted, Tier


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="pbkv", help="cache-manager policy timed")
    parser.add_argument("--blocks", type=int, default=100_000, help="cached GPU blocks")
    parser.add_argument("--workflows", type=int, default=1_000, help="active workflows")
    parser.add_argument("--apps", type=int, default=10, help="apps the workflows belong to")
    parser.add_argument("--agents", type=int, default=5, help="agents per app")
    parser.add_argument("--system-blocks", type=int, default=20, help="per (app, agent)")
    parser.add_argument("--events", type=int, default=2_000, help="step events timed")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the set-up")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() the set-up state before timing (long-lived objects "
        "are then not rescanned by the cyclic GC)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError

    for name in ("blocks", "workflows", "apps", "agents", "system_blocks", "events"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    with progress(
        args, args.workflows + args.events, "set-up workflows, then timed events", unit="item"
    ) as bar:
        result = measure_planner(
            policy=args.policy,
            num_blocks=args.blocks,
            num_workflows=args.workflows,
            num_apps=args.apps,
            agents_per_app=args.agents,
            system_blocks=args.system_blocks,
            num_events=args.events,
            seed=args.seed,
            gc_freeze=args.gc_freeze,
            tick=bar.advance,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"policy {result['policy']}: {result['cached_blocks']:,} cached blocks, "
            f"{result['active_workflows']:,} active workflows, {result['events']:,} step "
            f"events"
        )
        print("  per step event (hot path), CPU time on one core:")
        print(
            f"    step + plan:  p50 {result['cpu_p50_ms']:.3f} ms   "
            f"p99 {result['cpu_p99_ms']:.3f} ms   max {result['cpu_max_ms']:.3f} ms"
        )
        print(
            f"    plan() alone: p50 {result['plan_cpu_p50_ms']:.3f} ms   "
            f"p99 {result['plan_cpu_p99_ms']:.3f} ms"
        )
        print(
            f"  wall clock (includes time other processes held the core): step + plan p50 "
            f"{result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms"
        )
        print(
            f"  plan names {result['plan_blocks_named']:,} blocks; gc.freeze "
            f"{result['gc_freeze']}; fallback_lru {result['fallback_lru']}"
        )
        print(
            f"  blocks re-ranked per event: mean {result['reranked_mean']:.1f}; "
            f"set-up {result['setup_s']:.1f} s (first full ranking "
            f"{result['first_plan_s']:.2f} s)"
        )
    return 0


class _TablePredictor:
    """A fixed random next-agent table per app: forecasting costs O(agents), so the timing is
    the manager's, not a model's."""

    name = "table"

    def __init__(self, agents: dict[str, list[str]], seed: int) -> None:
        from pbkv.predictor.forecast import AgentForecast, Forecast

        self._forecast_cls = Forecast
        rng = random.Random(seed)
        self._rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        for app, names in agents.items():
            for prev in names:
                weights = [rng.random() for _ in names]
                total = sum(weights)
                rows = []
                for name, w in zip(names, weights, strict=True):
                    p = w / total
                    within = (p, min(1.0, 2 * p), min(1.0, 3 * p), min(1.0, 4 * p))
                    rows.append(AgentForecast(name, within, 1.0 / p if p > 0.25 else None))
                self._rows[(app, prev)] = tuple(rows)

    def next_distribution(self, state):  # pragma: no cover - not used by the manager
        return {a.agent: a.p_next for a in self._rows[(state.app, state.steps[-1].agent)]}

    def forecast(self, state, horizon: int = 4):
        rows = self._rows[(state.app, state.steps[-1].agent)]
        return self._forecast_cls(state.workflow_id, state.step_index, 4, rows, 0.8)

    def observe_finished(self, state) -> None:
        pass


def measure_planner(
    *,
    policy: str = "pbkv",
    num_blocks: int = 100_000,
    num_workflows: int = 1_000,
    num_apps: int = 10,
    agents_per_app: int = 5,
    system_blocks: int = 20,
    num_events: int = 2_000,
    seed: int = 0,
    gc_freeze: bool = False,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Time scoring + planning per step event (see the module docstring); returns a dict of
    figures. Callable from other benchmarks (e.g. ``pbkv bench policies``). ``tick()`` is
    called after each set-up workflow and each timed event (outside the timed part)."""
    from pbkv.cache_manager.accuracy import AccuracyConfig
    from pbkv.cache_manager.manager import CacheManager, ManagerConfig
    from pbkv.predictor.forecast import ObservedStep, Predictor

    rng = random.Random(seed)
    apps = [f"app{i}" for i in range(num_apps)]
    agents = {app: [f"{app}-agent{j}" for j in range(agents_per_app)] for app in apps}
    table = _TablePredictor(agents, seed)
    Predictor.register(_TablePredictor)
    now = [0.0]
    # The agents here are drawn at random, so the table predictor is often wrong: the LRU
    # fall-back is disabled to time the full scoring path, not the cheap fall-back plan.
    no_fallback = AccuracyConfig(fallback_below=0.0, recover_at=0.0)
    manager = CacheManager(
        ManagerConfig(policy=policy, accuracy=no_fallback), table, clock=lambda: now[0]
    )
    engine = "bench"
    manager.attach_engine(
        engine, gpu_blocks=num_blocks + 10 * num_workflows, cpu_blocks=0, tokens_per_block=16
    )
    setup_start = time.perf_counter()
    system = {
        (app, a): tuple(f"{app}/{a}/sys{k}".encode() for k in range(system_blocks))
        for app in apps
        for a in agents[app]
    }
    # Three agents per workflow have run once; history chains fill the rest of the blocks.
    per_chain = max(1, (num_blocks - len(system) * system_blocks) // (3 * num_workflows))
    wf_app: dict[str, str] = {}
    prompts: dict[tuple[str, str], tuple[bytes, ...]] = {}
    rid = 0
    seen_system: set[tuple[str, str]] = set()
    for w in range(num_workflows):
        wid = f"wf{w}"
        app = apps[w % num_apps]
        wf_app[wid] = app
        manager.start_workflow(wid, app, now_s=now[0])
        for a in rng.sample(agents[app], 3):
            chain = system[(app, a)] + tuple(f"{wid}/{a}/h{k}".encode() for k in range(per_chain))
            prompts[(wid, a)] = chain
            rid += 1
            hits = system_blocks if (app, a) in seen_system else 0
            seen_system.add((app, a))
            _request(
                manager,
                engine,
                f"r{rid}",
                wid,
                a,
                chain,
                now[0],
                hits=hits,
            )
            manager.step_started(wid, a, now_s=now[0])
            manager.step_finished(wid, ObservedStep(a))
            now[0] += 0.001
        tick()
    t = time.perf_counter()
    manager.plan(engine)
    first_plan_s = time.perf_counter() - t
    setup_s = time.perf_counter() - setup_start
    if gc_freeze:
        gc.collect()
        gc.freeze()  # what a long-running service can do after loading its state
    cached = manager.stats().gpu_blocks_cached

    step_ms: list[float] = []  # wall clock (inflated when other processes share the core)
    plan_ms: list[float] = []
    step_cpu_ms: list[float] = []  # this thread's CPU time: the cost on one core
    plan_cpu_ms: list[float] = []
    reranked: list[int] = []
    planner = manager._engines[engine].planner
    for _ in range(num_events):
        wid = f"wf{rng.randrange(num_workflows)}"
        app = wf_app[wid]
        a = rng.choice(agents[app])
        seen_system.add((app, a))
        old = prompts.get((wid, a), system[(app, a)])
        chain = old + (f"{wid}/{a}/n{rid}".encode(),)  # the next prompt extends the last
        prompts[(wid, a)] = chain
        rid += 1
        now[0] += 0.01
        c0 = time.thread_time()
        t0 = time.perf_counter()
        manager.step_started(wid, a, now_s=now[0])
        _request(
            manager,
            engine,
            f"r{rid}",
            wid,
            a,
            chain,
            now[0],
            hits=len(old),
        )
        manager.step_finished(wid, ObservedStep(a))
        c1 = time.thread_time()
        t1 = time.perf_counter()
        manager.plan(engine)
        t2 = time.perf_counter()
        c2 = time.thread_time()
        step_ms.append((t2 - t0) * 1e3)
        plan_ms.append((t2 - t1) * 1e3)
        step_cpu_ms.append((c2 - c0) * 1e3)
        plan_cpu_ms.append((c2 - c1) * 1e3)
        reranked.append(planner.last_reranked)
        tick()
    last = manager.plan(engine)
    named = len(last.evict_first)
    return {
        "policy": policy,
        "cached_blocks": cached,
        "active_workflows": num_workflows,
        "events": num_events,
        "p50_ms": statistics.median(step_ms),
        "p99_ms": _pct(step_ms, 99),
        "max_ms": max(step_ms),
        "plan_p50_ms": statistics.median(plan_ms),
        "plan_p99_ms": _pct(plan_ms, 99),
        "cpu_p50_ms": statistics.median(step_cpu_ms),
        "cpu_p99_ms": _pct(step_cpu_ms, 99),
        "cpu_max_ms": max(step_cpu_ms),
        "plan_cpu_p50_ms": statistics.median(plan_cpu_ms),
        "plan_cpu_p99_ms": _pct(plan_cpu_ms, 99),
        "reranked_mean": statistics.fmean(reranked),
        "setup_s": setup_s,
        "first_plan_s": first_plan_s,
        "gc_freeze": gc_freeze,
        "fallback_lru": manager.stats().fallback_lru,
        "plan_blocks_named": named,
    }


def _request(
    manager,
    engine,
    rid,
    wid,
    agent,
    chain,
    now_s,
    hits: int = 0,
) -> None:
    manager.on_engine_event(
        RequestStarted(engine, rid, chain, 16 * len(chain), hits, 0, wid, agent, now_s=now_s)
    )
    if hits < len(chain):
        parent = chain[hits - 1] if hits else None
        manager.on_engine_event(BlockStored(engine, chain[hits:], parent, 16, Tier.GPU))
    manager.on_engine_event(RequestFinished(engine, rid, now_s=now_s))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pbkv.bench.planner")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
