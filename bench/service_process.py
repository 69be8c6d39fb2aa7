"""The service side of ``pbkv bench service``: start ``pbkv serve`` with its CPU meter, read
the meter and the process's CPU and RSS, fill it with workflows for the memory figure, and the
in-process per-step cost of the CacheManager + predictor (``--step-cost``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pbkv.service.cpu_meter import ENV as CPU_METER_ENV

AGENTS = ("planner", "coder", "reviewer", "tester", "writer")


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cpu_snapshot(pid: int | None, path: Path) -> dict[str, Any] | None:
    """The service's CPU meter snapshot (SIGUSR1, then wait for the file to be rewritten);
    None without a service of our own or when it has no meter (an older pbkv)."""
    if pid is None:
        return None
    last = json.loads(path.read_text())["n"] if path.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            snap = json.loads(path.read_text())
            if snap["n"] > last:
                return snap
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def _open_many(target: str, n: int, steps: int) -> None:
    from pbkv.service.client import AsyncPbkvClient

    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            wid = f"mem-{i}"
            await client.start_workflow(wid, "bench", task=f"task {i}")
            for s in range(steps):
                agent = AGENTS[(s + i) % len(AGENTS)]
                await client.step_started(wid, agent)
                await client.step_finished(wid, agent, step_index=s, output_text="ok")

    async with AsyncPbkvClient(target, timeout_s=60) as client:
        await asyncio.gather(*(one(i) for i in range(n)))


def measure_memory(target: str, pid: int, n: int) -> dict[str, Any]:
    before = rss_mb(pid)
    t0 = time.perf_counter()
    asyncio.run(_open_many(target, n, steps=4))
    after = rss_mb(pid)
    return {
        "active_workflows": n,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "kb_per_workflow": 1024 * (after - before) / n,
        "fill_s": time.perf_counter() - t0,
    }


def step_cost(model: Path, steps: int, text_bytes: int = 1024) -> dict[str, Any]:
    """What one step (StepStarted + StepFinished with ``text_bytes`` of output) costs the
    event loop in the CacheManager + predictor, near step 10 and near step ``steps`` of one
    workflow: the median over steps 10..19 of 200 fresh workflows, and over the last 200
    steps of one ``steps``-step workflow. CPU time of the thread (``time.thread_time``), so
    other jobs on the machine do not inflate it."""
    from pbkv.cache_manager.manager import CacheManager
    from pbkv.predictor.artifact import load_model
    from pbkv.predictor.forecast import ObservedStep

    manager = CacheManager(predictor=load_model(model))
    text = "x" * text_bytes

    def run(wid: str, n: int) -> list[float]:
        manager.start_workflow(wid, "bench")
        times = []
        for s in range(n):
            agent = AGENTS[(s * 7) % len(AGENTS)]
            t0 = time.thread_time()
            manager.step_started(wid, agent)
            manager.step_finished(wid, ObservedStep(agent, output_text=text))
            times.append(time.thread_time() - t0)
        manager.end_workflow(wid)
        return times

    early = [t for i in range(200) for t in run(f"short-{i}", 20)[10:20]]
    late = run("long", steps)[-200:]
    at_10, at_n = statistics.median(early), statistics.median(late)
    return {
        "steps": steps,
        "us_per_step_at_10": 1e6 * at_10,
        f"us_per_step_at_{steps}": 1e6 * at_n,
        "ratio": at_n / at_10,
    }


def default_model(folder: Path) -> Path:
    from pbkv.predictor.artifact import save_model
    from pbkv.predictor.registry import PREDICTORS
    from pbkv.trace import Segment, Step, Workflow

    workflows = [
        Workflow(
            f"t{i}",
            "bench",
            tuple(
                Step(AGENTS[(s * 7 + i) % len(AGENTS)], (Segment("new", 16),), 16) for s in range(8)
            ),
        )
        for i in range(50)
    ]
    path = folder / "model"
    save_model(PREDICTORS.create("markov", workflows=workflows), path, {"version": "bench"})
    return path


def _serve_env(meter: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != CPU_METER_ENV}
    return env if meter is None else {**env, CPU_METER_ENV: str(meter)}


def start_service(
    folder: Path, model: Path, extra: list[str], pbkv: Path | None = None, *, meter: bool = True
) -> tuple[subprocess.Popen, str]:
    """``pbkv serve`` (``pbkv``: that executable, default this one's) with its CPU meter on
    (``service/cpu_meter.py``: snapshots in ``folder/cpu.json`` on SIGUSR1) unless not
    ``meter``."""
    proc = subprocess.Popen(
        [
            str(pbkv or Path(sys.executable).with_name("pbkv")),
            "serve",
            "--port",
            "0",
            "--no-dashboard",
            "--log-level",
            "WARNING",
            "--store-path",
            str(folder / "traces.sqlite3"),
            "--model",
            str(model),
            "--max-pending-events",
            "100000",
            "--max-active-workflows",
            "1000000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=_serve_env(folder / "cpu.json" if meter else None),
    )
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, f"127.0.0.1:{int(line.split()[1])}"
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("pbkv serve did not start")
