"""``pbkv bench service``: a gRPC load generator against ``pbkv serve`` in another process.

    pbkv bench service --workflows 1000 --duration-s 20        # throughput + latency
    pbkv bench service --memory-workflows 10000                 # RSS with 10k active
    pbkv bench service --soak-s 180                             # RSS over a soak
    pbkv bench service --step-cost 10000                        # cost per step vs length
    pbkv bench service --replay 8                               # Session path in process
    pbkv bench service --rate 5000 --pbkv OTHER/.venv/bin/pbkv  # another checkout's server

The service runs as a subprocess (``pbkv serve``, SQLite store with synchronous=FULL, a
trained predictor artifact); the load comes from ``--procs`` further processes, each an
asyncio client keeping its share of ``--workflows`` workflows running at once over
``--streams`` Session streams (default one, as an orchestrator process would, with the
client's coalescing window, ``--linger-ms``). Every workflow
loops: StepStarted + StepFinished (the forecast comes back in the answer) for ``--steps``
steps, EndWorkflow, start again -- over ``Session`` streams (default) or unary RPCs.
Reported: orchestrator events/s (every acknowledged event is recorded), StepFinished/s,
StepFinished latency p50/p99 (client-side, including the durable store commit), the
server's CPU use and its RSS (psutil) over time, and the server's CPU per event by component
(``server_cpu_us_per_event``: validation, manager, predictor, convert, store, the rest --
gRPC, asyncio, protobuf parsing -- and the events per Session request, reply and store
commit), from the service's CPU meter (``service/cpu_meter.py``). Modules: the load processes
in ``service_load.py``, the server process, memory and step-cost parts in
``service_process.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.bench.service_load import worker
from pbkv.bench.service_process import (
    cpu_s,
    cpu_snapshot,
    default_model,
    measure_memory,
    rss_mb,
    start_service,
    step_cost,
)
from pbkv.service.cpu_meter import per_event_us


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
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="Session streams per load process (an orchestrator process's one session)",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="Session requests awaiting their answers per stream, at most "
        "(AsyncSession.max_inflight; default: no limit)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="events per Session request at most (AsyncSession.max_batch; default: its default)",
    )
    parser.add_argument(
        "--linger-ms",
        type=float,
        default=None,
        help="Session coalescing window while a request is unanswered (AsyncSession.linger_s, "
        "in ms; default: the client's default; 0: off)",
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
        "--replay",
        type=int,
        default=0,
        metavar="K",
        help="only replay 2 x --workflows workflows (--workflows at a time) through the "
        "Session servicer in process, K events per request, no gRPC (bench/session_replay.py)",
    )
    parser.add_argument(
        "--pbkv",
        type=Path,
        help="the pbkv executable to serve with (default: this one; e.g. another checkout's, "
        "to compare two versions)",
    )
    parser.add_argument(
        "--no-cpu-meter",
        dest="cpu_meter",
        action="store_false",
        help="serve without the per-component CPU meter (no breakdown; the server's total "
        "CPU then has no meter in it, also for another checkout's --pbkv)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out/service"), help="folder for service.json"
    )
    add_progress_argument(parser)


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
            target=worker,
            args=(
                target,
                f"{run_tag}-p{i}",
                n,
                args.steps,
                args.warmup_s,
                args.duration_s,
                args.api,
                args.streams,
                session_options(args),
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


def session_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``AsyncSession`` options the load uses; an option left None keeps the client's
    default."""
    linger_ms = args.linger_ms
    options = {
        "max_inflight": args.max_inflight,
        "max_batch": args.max_batch,
        "linger_s": None if linger_ms is None else linger_ms / 1e3,
    }
    return {k: v for k, v in options.items() if v is not None}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


# ---------------------------------------------------------------------------- memory
def soak(target: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    import threading

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.wait(5.0):
            samples.append((time.monotonic() - t0, rss_mb(pid)))

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


def run(args: argparse.Namespace) -> int:
    from pbkv.cli import CliError

    if args.workflows <= 0 or args.procs <= 0 or args.steps <= 0 or args.duration_s <= 0:
        raise CliError("--workflows, --procs, --steps and --duration-s must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        from pbkv.bench.session_replay import replay

        report = replay(args.replay, 2 * args.workflows, args.steps, args.workflows)
        _print(report)
        (args.out / "replay.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.step_cost:
        with tempfile.TemporaryDirectory() as tmp:
            report = step_cost(args.model or default_model(Path(tmp)), args.step_cost)
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
            model = args.model or default_model(Path(tmp))
            proc, target = start_service(
                Path(tmp), model, args.serve_arg, args.pbkv, meter=args.cpu_meter
            )
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
            snap0 = cpu_snapshot(pid, meter) if args.cpu_meter else None
            cpu0, wall0 = cpu_s(pid), time.perf_counter()
            report["load"] = load = run_load(target, args)
            if snap0 is not None:
                load["server_cpu_us_per_event"] = per_event_us(snap0, cpu_snapshot(pid, meter))
            if pid is not None:
                # The server's own CPU use: on a shared 2-core machine the load generator and
                # other jobs compete with it, so events per server CPU-second is the figure
                # that does not depend on what else runs.
                cpu, wall = cpu_s(pid) - cpu0, time.perf_counter() - wall0
                load["server_cpu_cores_used"] = cpu / wall
                load["events_per_server_cpu_s"] = load.pop("_events_total") / cpu
            _print(load)
            if pid is not None:
                report["rss_after_load_mb"] = rss_mb(pid)
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
