"""``pbkv bench service``: a gRPC load generator against ``pbkv serve`` in another process.

    pbkv bench service --workflows 1000 --duration-s 20        # throughput + latency
    pbkv bench service --memory-workflows 10000                 # RSS with 10k active
    pbkv bench service --soak-s 180                             # RSS over a soak
    pbkv bench service --step-cost 10000                        # cost per step vs length

The service runs as a subprocess (``pbkv serve``, SQLite store with synchronous=FULL, a
trained predictor artifact); the load comes from ``--procs`` further processes, each an
asyncio client keeping its share of ``--workflows`` workflows running at once. Every workflow
loops: StepStarted + StepFinished (the forecast comes back in the answer) for ``--steps``
steps, EndWorkflow, start again -- over ``Session`` streams (default) or unary RPCs.
Reported: orchestrator events/s (every acknowledged event is recorded), StepFinished/s,
StepFinished latency p50/p99 (client-side, including the durable store commit), the
server's CPU use and its RSS (psutil) over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.service.cpu_meter import ENV as CPU_METER_ENV
from pbkv.service.cpu_meter import per_event_us

AGENTS = ("planner", "coder", "reviewer", "tester", "writer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="a running service (default: start pbkv serve)")
    parser.add_argument(
        "--workflows", type=int, default=1_000, help="workflows kept running at once"
    )
    parser.add_argument("--steps", type=int, default=8, help="steps per workflow")
    parser.add_argument("--duration-s", type=float, default=20.0, help="measured load time")
    parser.add_argument(
        "--warmup-s", type=float, default=3.0, help="load before the measured time (not counted)"
    )
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--api",
        choices=("session", "unary"),
        default="session",
        help="Session stream (pipelined) or one unary RPC per event",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: offer this many events/s in all (default: closed "
        "loop, each workflow sends its next event when answered)",
    )
    parser.add_argument("--streams", type=int, default=4, help="Session streams per load process")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=2,
        help="Session requests awaiting their answers per stream (AsyncSession.max_inflight)",
    )
    parser.add_argument(
        "--memory-workflows",
        type=int,
        default=0,
        help="also measure RSS with this many active workflows",
    )
    parser.add_argument(
        "--soak-s", type=float, default=0.0, help="also run a soak this long, sampling RSS"
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="predictor artifact (default: markov trained here on synthetic workflows)",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for pbkv serve (repeatable), e.g. --serve-arg=--recent-ended=2000",
    )
    parser.add_argument(
        "--step-cost",
        type=int,
        default=0,
        metavar="N",
        help="only measure the manager + predictor cost per step at step 10 "
        "and at step N of one workflow (in process)",
    )
    parser.add_argument(
        "--pbkv",
        type=Path,
        help="the pbkv executable to serve with (default: this one; e.g. another checkout's, "
        "to compare two versions)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/service"), help="folder for service.json"
    )
    add_progress_argument(parser)


# ---------------------------------------------------------------------------- load (workers)
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


def _worker(
    target: str,
    tag: str,
    workflows: int,
    steps: int,
    warmup_s: float,
    duration_s: float,
    api: str,
    streams: int,
    max_inflight: int,
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
                    await client.session(max_inflight=max_inflight).__aenter__()
                    for _ in range(streams)
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


def run_load(target: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shares = [
        args.workflows // args.procs + (1 if i < args.workflows % args.procs else 0)
        for i in range(args.procs)
    ]
    run_tag = f"{os.getpid()}-{time.monotonic_ns()}"  # workflow ids unique per load phase
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                target,
                f"{run_tag}-p{i}",
                n,
                args.steps,
                args.warmup_s,
                args.duration_s,
                args.api,
                args.streams,
                args.max_inflight,
                args.rate / args.procs if args.rate else None,
                queue,
            ),
        )
        for i, n in enumerate(shares)
    ]
    for p in procs:
        p.start()
    results = _collect(queue, len(procs), args)
    for p in procs:
        p.join(30)
    lat = sorted(x for r in results for x in r["latencies_s"])
    measured = sum(r["measured_events"] for r in results)
    step_finished = sum(r["measured_step_finished"] for r in results)
    return {
        "api": args.api,
        "offered_events_per_s": args.rate,
        "workflows": args.workflows,
        "procs": args.procs,
        "duration_s": args.duration_s,
        "events_per_s": measured / args.duration_s,
        "step_finished_per_s": step_finished / args.duration_s,
        "step_finished_p50_ms": 1e3 * _pct(lat, 50),
        "step_finished_p99_ms": 1e3 * _pct(lat, 99),
        "step_finished_mean_ms": 1e3 * statistics.fmean(lat) if lat else None,
        "samples": len(lat),
        "_events_total": sum(r["events"] for r in results),
        "loadgen_cpu_cores_used": sum(r["cpu_cores_used"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


# ---------------------------------------------------------------------------- memory
def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _cpu_snapshot(pid: int | None, path: Path) -> dict[str, Any] | None:
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


def _rss_mb(pid: int) -> float:
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
    before = _rss_mb(pid)
    t0 = time.perf_counter()
    asyncio.run(_open_many(target, n, steps=4))
    after = _rss_mb(pid)
    return {
        "active_workflows": n,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "kb_per_workflow": 1024 * (after - before) / n,
        "fill_s": time.perf_counter() - t0,
    }


def soak(target: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    import threading

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.wait(5.0):
            samples.append((time.monotonic() - t0, _rss_mb(pid)))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    soak_args = argparse.Namespace(**{**vars(args), "duration_s": args.soak_s, "warmup_s": 0.0})
    load = run_load(target, soak_args)
    stop.set()
    thread.join(10)
    rss = [r for _, r in samples]
    half = len(rss) // 2
    load.pop("_events_total", None)
    return {
        "soak_s": args.soak_s,
        "events_per_s": load["events_per_s"],
        "rss_samples_mb": [round(r, 1) for r in rss],
        "rss_first_half_max_mb": max(rss[:half]) if half else None,
        "rss_second_half_max_mb": max(rss[half:]) if rss else None,
    }


def step_cost(model: Path, steps: int, text_bytes: int = 1024) -> dict[str, Any]:
    """What one step (StepStarted + StepFinished with ``text_bytes`` of output) costs the
    event loop in the CacheManager + predictor, near step 10 and near step ``steps`` of one
    workflow: the median over steps 10..19 of 200 fresh workflows, and over the last 200
    steps of one ``steps``-step workflow."""
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
            t0 = time.perf_counter()
            manager.step_started(wid, agent)
            manager.step_finished(wid, ObservedStep(agent, output_text=text))
            times.append(time.perf_counter() - t0)
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


# ---------------------------------------------------------------------------- service
def _default_model(folder: Path) -> Path:
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


def start_service(
    folder: Path, model: Path, extra: list[str], pbkv: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """``pbkv serve`` (``pbkv``: that executable, default this one's) with its CPU meter on
    (``service/cpu_meter.py``: snapshots in ``folder/cpu.json`` on SIGUSR1)."""
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
        env={**os.environ, CPU_METER_ENV: str(folder / "cpu.json")},
    )
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, f"127.0.0.1:{int(line.split()[1])}"
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("pbkv serve did not start")


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError

    if args.workflows <= 0 or args.procs <= 0 or args.steps <= 0 or args.duration_s <= 0:
        raise CliError("--workflows, --procs, --steps and --duration-s must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step_cost:
        with tempfile.TemporaryDirectory() as tmp:
            report = step_cost(args.model or _default_model(Path(tmp)), args.step_cost)
        _print(report)
        (args.out / "step_cost.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    # SIGTERM unwinds like Ctrl-C, so the service subprocess is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "serve_args": args.serve_arg,
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        if args.target:
            target, pid = args.target, None
        else:
            model = args.model or _default_model(Path(tmp))
            proc, target = start_service(Path(tmp), model, args.serve_arg, args.pbkv)
            pid = proc.pid
            # keep the pipe drained
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        try:
            print(
                f"service {target}: {args.workflows} concurrent workflows from {args.procs} "
                f"processes, {args.warmup_s:.0f} s warm-up + {args.duration_s:.0f} s"
            )
            meter = Path(tmp) / "cpu.json"
            snap0 = _cpu_snapshot(pid, meter)
            cpu0, wall0 = _cpu_s(pid), time.perf_counter()
            report["load"] = load = run_load(target, args)
            if snap0 is not None:
                load["server_cpu_us_per_event"] = per_event_us(snap0, _cpu_snapshot(pid, meter))
            if pid is not None:
                # The server's own CPU use: on a shared 2-core machine the load generator and
                # other jobs compete with it, so events per server CPU-second is the figure
                # that does not depend on what else runs.
                cpu, wall = _cpu_s(pid) - cpu0, time.perf_counter() - wall0
                load["server_cpu_cores_used"] = cpu / wall
                load["events_per_server_cpu_s"] = load.pop("_events_total") / cpu
            _print(load)
            if pid is not None:
                report["rss_after_load_mb"] = _rss_mb(pid)
            if args.memory_workflows and pid is not None:
                report["memory"] = measure_memory(target, pid, args.memory_workflows)
                _print(report["memory"])
            if args.soak_s and pid is not None:
                report["soak"] = soak(target, pid, args)
                _print(report["soak"])
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    (args.out / "service.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'service.json'}")
    return 0


def _collect(queue: Any, count: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The load processes' results; meanwhile a progress bar over the warm-up and measured
    seconds (``pbkv.bench.progress``)."""
    import queue as queues

    planned_s = args.warmup_s + args.duration_s
    deadline = time.monotonic() + planned_s + 300
    results: list[dict[str, Any]] = []
    with progress(args, round(planned_s), "load (warm-up + measured)", unit="second") as bar:
        start, shown = time.monotonic(), 0
        while len(results) < count:
            try:
                results.append(queue.get(timeout=1.0))
            except queues.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("the load processes did not report in time") from None
            elapsed = min(round(time.monotonic() - start), round(planned_s))
            bar.advance(elapsed - shown)
            shown = elapsed
    return results


def _print(d: dict[str, Any]) -> None:
    print(
        "  "
        + ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in d.items()
            if not isinstance(v, list | dict)
        )
    )
    for k, v in d.items():
        if isinstance(v, dict):
            print(f"  {k}: " + ", ".join(f"{c}={x:.1f}" for c, x in v.items()))
