"""The load side of ``pbkv bench service``: each load process (``worker``) runs its share of
the workflows as asyncio loops over ``Session`` streams (or unary calls), closed loop or paced
to an offered rate, and reports latencies and counts to the parent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pbkv.bench.service_process import AGENTS


class _Pacer:
    """Open loop: one event every ``interval_s`` (None: as fast as answers come back)."""

    def __init__(self, interval_s: float | None, offset_s: float) -> None:
        self.interval_s = interval_s
        self.next_t = time.monotonic() + offset_s

    async def wait(self) -> None:
        if self.interval_s is None:
            return
        delay = self.next_t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.next_t += self.interval_s


async def _workflow_loop(
    client,
    wid_prefix: str,
    steps: int,
    stop_at: float,
    measure_from: float,
    lat: list[float],
    counts: dict[str, int],
    pacer: _Pacer,
) -> None:
    n = 0
    while time.monotonic() < stop_at:
        wid = f"{wid_prefix}-{n}"
        n += 1
        await pacer.wait()
        await client.start_workflow(wid, "bench", task="load test")
        counts["events"] += 1
        counts["measured_events"] += measure_from <= time.monotonic() <= stop_at
        for s in range(steps):
            agent = AGENTS[(s * 7 + n) % len(AGENTS)]
            await pacer.wait()
            await client.step_started(wid, agent)
            await pacer.wait()
            t0 = time.monotonic()
            await client.step_finished(wid, agent, step_index=s, output_text="ok", output_tokens=16)
            t1 = time.monotonic()
            if t0 >= measure_from and t1 <= stop_at:
                lat.append(t1 - t0)
                counts["measured_step_finished"] += 1
                counts["measured_events"] += 2
            counts["events"] += 2
            if t1 >= stop_at:
                return
        await pacer.wait()
        await client.end_workflow(wid)
        counts["events"] += 1
        counts["measured_events"] += measure_from <= time.monotonic() <= stop_at


def worker(
    target: str,
    tag: str,
    workflows: int,
    steps: int,
    warmup_s: float,
    duration_s: float,
    api: str,
    streams: int,
    session_options: dict[str, Any],
    rate: float | None,
    queue,
) -> None:
    from pbkv.service.client import AsyncPbkvClient

    async def main() -> dict[str, Any]:
        lat: list[float] = []
        counts = {"events": 0, "measured_events": 0, "measured_step_finished": 0}
        now = time.monotonic()
        measure_from, stop_at = now + warmup_s, now + warmup_s + duration_s
        async with AsyncPbkvClient(target, timeout_s=30) as client:
            if api == "unary":
                callers = [client]
            else:  # a few Session streams, each shared by its share of the workflows
                callers = [
                    await client.session(**session_options).__aenter__() for _ in range(streams)
                ]
            # Per-workflow event interval for the open-loop rate; offsets spread the starts.
            interval = workflows / rate if rate else None
            results = await asyncio.gather(
                *(
                    _workflow_loop(
                        callers[i % len(callers)],
                        f"{tag}-w{i}",
                        steps,
                        stop_at,
                        measure_from,
                        lat,
                        counts,
                        _Pacer(interval, (interval or 0) * i / workflows),
                    )
                    for i in range(workflows)
                ),
                return_exceptions=True,
            )
            # A failed call ends that workflow's loop; it is counted, never hidden.
            errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)]
            counts["errors"] = len(errors)
            counts["first_error"] = errors[0] if errors else None
            if api != "unary":
                for session in callers:
                    await session.close()
        return {"latencies_s": lat, **counts}

    wall0, cpu0 = time.monotonic(), time.process_time()
    result = asyncio.run(main())
    result["cpu_cores_used"] = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    queue.put(result)
