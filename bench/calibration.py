"""``pbkv bench calibration``: calibration under drift, and online recalibration (issue 12,
item 6).

Trains the fused model on some collections and evaluates it, with every history baseline, on
a deliberately shifted one. Two shifts of the bundled logs (``--shift``)::

    longer-runs (default)  train: CaptainAgent, Magentic-One and the shorter half of the
                           ChatDev runs (by steps); shifted: the longer half of ChatDev (the
                           same app, a collection of longer runs: more review loops)
    new-app                train: CaptainAgent and Magentic-One; shifted: ChatDev, an app and
                           a dataset the model never saw (it learns the app online)

or any trace files (``--train`` and ``--shifted``). The shifted workflows are split by
workflow into a stream and a held-out set::

    stream (in a seeded order): each round is forecast, judged and fed to the predictor's
        own OnlineRecalibrator (what the cache manager does with every forecast); each
        finished workflow goes into the predictor's history counts (online learning)
    at each checkpoint (0, 50, 100, 200, 400 stream rounds): the held-out set is forecast
        (nothing is learnt from it) and scored: top-1, ECE of the top P(next) as the
        predictor gives it ("raw") and through the recalibration learnt so far
    online ECE: the ECE of the next ``--online-window`` stream rounds after the checkpoint,
        each forecast recalibrated as it was made (what the service's
        pbkv_predictor_calibration_error{metric="ece"} shows)

Each predictor (fused, frequency, markov1, markov, recency, static-graph) learns from the same
stream, from its own copy of the training counts. Figures are medians over seeds (the fused
model's training seed, the split and the stream order).
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pbkv.bench.progress import add_progress_argument, progress
from pbkv.cli import CliError, warn
from pbkv.predictor.recalibration import OnlineRecalibrator, RecalibrationConfig

SAMPLES = Path(__file__).resolve().parents[1] / "training" / "samples"
OTHERS = ("captain-agent", "magentic-one")  # bundled logs never shifted
SHIFTS = ("longer-runs", "new-app")
BASELINES = ("frequency", "markov1", "markov", "recency", "static-graph")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shift", choices=SHIFTS, default=SHIFTS[0], help="which bundled shift")
    p.add_argument(
        "--train", nargs="+", metavar="FILE", help="traces to train on (instead of --shift)"
    )
    p.add_argument("--shifted", nargs="+", metavar="FILE", help="the shifted traces (with --train)")
    p.add_argument("--seeds", type=int, default=4, help="seeds; figures are medians over them")
    p.add_argument(
        "--checkpoints",
        default="0,50,100,200,400",
        help="stream rounds observed at which the held-out set is scored (comma list)",
    )
    p.add_argument(
        "--eval-fraction", type=float, default=0.5, help="share of shifted workflows held out"
    )
    p.add_argument(
        "--window", type=int, default=RecalibrationConfig().window, help="recalibration window"
    )
    p.add_argument(
        "--prior-weight",
        type=float,
        default=RecalibrationConfig().prior_weight,
        help="recalibration: pseudo-forecasts per bin at no correction",
    )
    p.add_argument(
        "--online-window", type=int, default=200, help="stream rounds the online ECE covers"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/calibration.json")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_progress_argument(p)


def run(args: argparse.Namespace) -> int:
    from pbkv.training.trace_io import TraceError
    from pbkv.training.train import load_traces

    try:
        recalibration = RecalibrationConfig(window=args.window, prior_weight=args.prior_weight)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.seeds < 1:
        raise CliError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0.0 < args.eval_fraction < 1.0:
        raise CliError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    try:
        checkpoints = sorted({int(x) for x in args.checkpoints.split(",") if x.strip()})
    except ValueError:
        raise CliError(
            f"--checkpoints: expected a comma list of integers, got {args.checkpoints!r}"
        ) from None
    if not checkpoints or checkpoints[0] < 0:
        raise CliError(f"--checkpoints: expected integers >= 0, got {args.checkpoints!r}")
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise CliError(f"--out {args.out}: folder {args.out.parent} does not exist")
    if (args.train is None) != (args.shifted is None):
        raise CliError("--train and --shifted go together (or neither: --shift)")
    if args.online_window < 1:
        raise CliError(f"--online-window must be >= 1, got {args.online_window}")
    try:
        train, shifted = (
            (load_traces(args.train), load_traces(args.shifted))
            if args.train is not None
            else bundled_shift(args.shift)
        )
    except (FileNotFoundError, TraceError) as exc:
        raise CliError(str(exc)) from None
    if not shifted:
        raise CliError("no shifted workflows")
    overlap = {w.workflow_id for w in train} & {w.workflow_id for w in shifted}
    if overlap:
        raise CliError(f"{len(overlap)} shifted workflows are in the training traces too")
    runs = []
    with progress(args, args.seeds, "bench calibration", unit="seed") as bar:
        for seed in range(args.seeds):
            runs.append(
                measure(
                    train,
                    shifted,
                    seed,
                    checkpoints,
                    args.eval_fraction,
                    recalibration,
                    args.online_window,
                )
            )
            bar.advance()
    report = summarize(runs, args)
    if args.out is not None:
        args.out.mkdir(exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    last = report["median"]["fused"][-1]
    if last["ece_recalibrated"] > 0.05:
        warn(
            f"fused: held-out ECE after {last['observed']} stream rounds is "
            f"{last['ece_recalibrated']:.3f}, above 0.05"
        )
    return 0


def bundled_shift(shift: str):
    """(training workflows, shifted workflows) of a bundled ``--shift``."""
    from pbkv.training.train import load_traces

    others = load_traces([SAMPLES / f"{n}.jsonl.gz" for n in OTHERS])
    chatdev = sorted(
        load_traces([SAMPLES / "chatdev.jsonl.gz"]), key=lambda w: (len(w.steps), w.workflow_id)
    )
    if shift == "new-app":
        return others, chatdev
    half = len(chatdev) // 2
    return others + chatdev[:half], chatdev[half:]


def _split(workflows, seed: int, eval_fraction: float):
    held = [
        zlib.crc32(f"cal:{seed}:{w.workflow_id}".encode()) % 1000 < eval_fraction * 1000
        for w in workflows
    ]
    stream = [w for w, h in zip(workflows, held, strict=True) if not h]
    evaluation = [w for w, h in zip(workflows, held, strict=True) if h]
    order = np.random.default_rng(seed).permutation(len(stream))
    return [stream[i] for i in order], evaluation


def _predictors(train, seed: int) -> dict[str, Any]:
    from pbkv.predictor.baselines import (
        FrequencyPredictor,
        MarkovPredictor,
        RecencyPredictor,
        StaticGraphPredictor,
    )
    from pbkv.predictor.fused import FusedConfig, FusedPredictor
    from pbkv.predictor.history import HistoryStats

    fused = FusedPredictor.fit(train, FusedConfig(seed=seed))
    snapshot = fused.stats.to_json()  # before the fused model learns anything online

    def counts() -> HistoryStats:
        return HistoryStats.from_json(snapshot)

    return {
        "fused": fused,
        "frequency": FrequencyPredictor(counts()),
        "markov1": MarkovPredictor(counts(), order=1),
        "markov": MarkovPredictor(counts(), order=fused.stats.max_order),
        "recency": RecencyPredictor(counts()),
        "static-graph": StaticGraphPredictor(counts()),
    }


def _rounds(workflow) -> list[tuple[Any, tuple[str, ...]]]:
    from pbkv.predictor.examples import examples

    return [(ex.state, ex.targets) for ex in examples(workflow)]


def _top(predictor, state, targets) -> tuple[float, int]:
    """(raw top P(next), 1 if the top pick is in the next round)."""
    dist = predictor.next_distribution(state)
    if not dist:
        return 0.0, 0
    best = max(dist, key=lambda a: dist[a])
    return float(dist[best]), int(best in targets)


def _score(predictor, recal: OnlineRecalibrator, held, observed: int) -> dict:
    """The held-out rounds' top-1 and ECE (raw, recalibrated) after ``observed`` rounds."""
    from pbkv.training.evaluate import expected_calibration_error

    tops = [(state.app, *_top(predictor, state, targets)) for state, targets in held]
    raw = np.array([p for _, p, _ in tops])
    cal = np.array([recal.calibrated(app, p) for app, p, _ in tops])
    hit = np.array([h for _, _, h in tops], dtype=float)
    return {
        "observed": observed,
        "top1": float(hit.mean()),
        "ece_raw": expected_calibration_error(raw, hit),
        "ece_recalibrated": expected_calibration_error(cal, hit),
    }


def measure(
    train,
    shifted,
    seed: int,
    checkpoints: list[int],
    eval_fraction: float,
    recalibration: RecalibrationConfig,
    online_window: int = 200,
) -> dict:
    """One seed: per predictor, the held-out and online figures at each checkpoint."""
    from pbkv.training.evaluate import expected_calibration_error

    stream, evaluation = _split(shifted, seed, eval_fraction)
    held = [r for w in evaluation for r in _rounds(w)]
    out: dict[str, list[dict]] = {}
    for name, predictor in _predictors(train, seed).items():
        recal = OnlineRecalibrator(recalibration)
        rows: list[dict] = []
        online: list[tuple[float, float, int]] = []  # (raw, recalibrated as made, hit)
        pending = list(checkpoints)
        for wf in stream:
            for state, targets in _rounds(wf):
                while pending and len(online) >= pending[0]:
                    rows.append(_score(predictor, recal, held, pending.pop(0)))
                p, hit = _top(predictor, state, targets)
                online.append((p, recal.calibrated(state.app, p), hit))
                recal.observe(state.app, p, bool(hit))
            predictor.observe_finished_workflow(wf)
        while pending and pending[0] <= len(online):  # checkpoints at the stream's very end
            rows.append(_score(predictor, recal, held, pending.pop(0)))
        for row in rows:
            window = np.array(online[int(row["observed"]) :][:online_window], dtype=float)
            full = len(window) == online_window
            for key, col in (("online_ece_raw", 0), ("online_ece_recalibrated", 1)):
                row[key] = (
                    expected_calibration_error(window[:, col], window[:, 2]) if full else None
                )
        out[name] = rows
    return {"seed": seed, "stream_rounds": len(online), "held_out_rounds": len(held), "rows": out}


KEYS = ("top1", "ece_raw", "ece_recalibrated", "online_ece_raw", "online_ece_recalibrated")


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    """Medians over the seeds, per predictor and checkpoint (a figure some seed could not
    measure, an online window past the stream's end, is a median of the others or None)."""
    median: dict[str, list[dict]] = {}
    for name in runs[0]["rows"]:
        count = min(len(r["rows"][name]) for r in runs)
        median[name] = []
        for i in range(count):
            row: dict[str, Any] = {"observed": runs[0]["rows"][name][i]["observed"]}
            for key in KEYS:
                values = [r["rows"][name][i][key] for r in runs]
                values = [v for v in values if v is not None]
                row[key] = float(np.median(values)) if values else None
            median[name].append(row)
    return {
        "train": [str(t) for t in args.train] if args.train else f"bundled --shift {args.shift}",
        "shifted": [str(t) for t in args.shifted] if args.shifted else None,
        "seeds": args.seeds,
        "online_window": args.online_window,
        "recalibration": {"window": args.window, "prior_weight": args.prior_weight},
        "stream_rounds": [r["stream_rounds"] for r in runs],
        "held_out_rounds": [r["held_out_rounds"] for r in runs],
        "median": median,
        "runs": runs,
    }


def format_report(report: dict) -> str:
    def cell(v: float | None, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"

    lines = [
        f"train: {report['train']}; median of {report['seeds']} seeds; stream rounds per "
        f"seed {report['stream_rounds']}, held-out rounds {report['held_out_rounds']}",
        f"{'':<13}{'':>9}{'held-out':>26}{'online, next ' + str(report['online_window']):>22}",
        f"{'predictor':<13}{'observed':>9}{'top1':>8}{'ECE raw':>9}{'recal':>9}"
        f"{'ECE raw':>11}{'recal':>11}",
    ]
    for name, rows in report["median"].items():
        for row in rows:
            lines.append(
                f"{name:<13}{row['observed']:>9}{row['top1']:>8.3f}"
                + cell(row["ece_raw"], 9)
                + cell(row["ece_recalibrated"], 9)
                + cell(row["online_ece_raw"], 11)
                + cell(row["online_ece_recalibrated"], 11)
            )
    return "\n".join(lines)
