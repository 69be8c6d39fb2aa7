"""``pbkv bench calibration --cost``: what each recalibration map costs per judged event.

Per event the service's hot path does ``calibrated`` (the forecast made) and ``observe`` (the
forecast judged by the step after it), for one app whose window is full. The maps run on the
same seeded stream (raw top P(next) uniform in [0.2, 0.99], right with probability 0.8 p),
in ``--cost-rounds`` rounds that alternate the maps (so load changes hit them alike); each
round warms a fresh recalibrator with ``window`` + 100 events, then times ``--cost-events``:
the CPU time of this thread (``time.thread_time_ns``: on a shared, loaded machine the wall
time also counts the time other processes had the core) and the wall time
(``time.perf_counter_ns``) around the whole loop. Reports the medians over rounds in us per
event, the ratio to the first map (CPU), and the load average before and after.
"""

from __future__ import annotations

import os
import random
import statistics
import time

from pbkv.predictor.recalibration import OnlineRecalibrator, RecalibrationConfig


def _stream(n: int, seed: int) -> list[tuple[float, bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.uniform(0.2, 0.99)
        out.append((p, rng.random() < 0.8 * p))
    return out


def _one_round(config: RecalibrationConfig, warm: list, timed: list) -> tuple[float, float]:
    """(CPU, wall) us per event: ``calibrated`` then ``observe``, over ``timed``, after
    ``warm``."""
    recal = OnlineRecalibrator(config)
    for p, hit in warm:
        recal.observe("app", p, hit)
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    for p, hit in timed:
        recal.calibrated("app", p)
        recal.observe("app", p, hit)
    cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    return cpu / 1e3 / len(timed), wall / 1e3 / len(timed)


def per_event_cost(
    maps: dict[str, RecalibrationConfig], events: int, rounds: int, seed: int = 0
) -> dict:
    """Median us per event per map over ``rounds`` alternating rounds (see the module)."""
    warm_n = max(c.window for c in maps.values()) + 100
    stream = _stream(warm_n + events, seed)
    warm, timed = stream[:warm_n], stream[warm_n:]
    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in maps}
    for _ in range(rounds):
        for m, config in maps.items():
            times[m].append(_one_round(config, warm, timed))
    cpu = {m: statistics.median(c for c, _ in t) for m, t in times.items()}
    first = next(iter(cpu.values()))
    return {
        "events": events,
        "rounds": rounds,
        "us_per_event": cpu,
        "wall_us_per_event": {m: statistics.median(w for _, w in t) for m, t in times.items()},
        "ratio_to_first": {m: v / first for m, v in cpu.items()},
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
    }


def format_cost(cost: dict) -> str:
    lines = [
        f"CPU (wall) per judged event (calibrated + observe), median of {cost['rounds']} "
        f"alternating "
        f"rounds of {cost['events']} events; load average "
        f"{cost['load_average_before_after'][0]:.1f} -> "
        f"{cost['load_average_before_after'][1]:.1f} on {cost['cpu_count']} CPUs:"
    ]
    for m, us in cost["us_per_event"].items():
        wall = cost["wall_us_per_event"][m]
        lines.append(f"  {m:<14}{us:>8.1f} us ({wall:.1f})  {cost['ratio_to_first'][m]:.2f}x")
    return "\n".join(lines)
