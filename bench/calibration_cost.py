"""``pbkv bench calibration --cost``: what each recalibration map costs per judged event.

Per event the service's hot path does ``calibrated`` (the forecast made) and ``observe`` (the
forecast judged by the step after it), for one app whose window is full. The maps run on the
same seeded stream (raw top P(next) uniform in [0.2, 0.99], right with probability 0.8 p),
in ``--cost-rounds`` rounds that alternate the maps (so load changes hit them alike); each
round warms a fresh recalibrator with ``window`` + 100 events, then times ``--cost-events``
(``time.perf_counter_ns`` around the whole loop). Reports the median over rounds in us per
event, the ratio to the first map, and the load average before and after.
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


def _one_round(config: RecalibrationConfig, warm: list, timed: list) -> float:
    """us per event: ``calibrated`` then ``observe``, over ``timed``, after ``warm``."""
    recal = OnlineRecalibrator(config)
    for p, hit in warm:
        recal.observe("app", p, hit)
    t0 = time.perf_counter_ns()
    for p, hit in timed:
        recal.calibrated("app", p)
        recal.observe("app", p, hit)
    return (time.perf_counter_ns() - t0) / 1e3 / len(timed)


def per_event_cost(
    maps: dict[str, RecalibrationConfig], events: int, rounds: int, seed: int = 0
) -> dict:
    """Median us per event per map over ``rounds`` alternating rounds (see the module)."""
    warm_n = max(c.window for c in maps.values()) + 100
    stream = _stream(warm_n + events, seed)
    warm, timed = stream[:warm_n], stream[warm_n:]
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {m: [] for m in maps}
    for _ in range(rounds):
        for m, config in maps.items():
            times[m].append(_one_round(config, warm, timed))
    median = {m: statistics.median(t) for m, t in times.items()}
    first = next(iter(median.values()))
    return {
        "events": events,
        "rounds": rounds,
        "us_per_event": median,
        "ratio_to_first": {m: v / first for m, v in median.items()},
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
    }


def format_cost(cost: dict) -> str:
    lines = [
        f"per judged event (calibrated + observe), median of {cost['rounds']} alternating "
        f"rounds of {cost['events']} events; load average "
        f"{cost['load_average_before_after'][0]:.1f} -> "
        f"{cost['load_average_before_after'][1]:.1f} on {cost['cpu_count']} CPUs:"
    ]
    for m, us in cost["us_per_event"].items():
        lines.append(f"  {m:<12}{us:>8.1f} us  ({cost['ratio_to_first'][m]:.2f}x)")
    return "\n".join(lines)
