"""``pbkv bench calibration``: calibration under drift, and online recalibration (issue 12,
item 6).

Trains the fused model on some collections and evaluates it, with every history baseline, on
a deliberately shifted one. Two shifts of the bundled logs (``--shift``)::

    longer-runs (default)  train: CaptainAgent, Magentic-One and the shorter half of the
                           ChatDev runs (by steps); shifted: the longer half of ChatDev (the
                           same app, a collection of longer runs: more review loops)
    new-app                train: CaptainAgent and Magentic-One; shifted: ChatDev, an app and
                           a dataset the model never saw (it learns the app online)

or any trace files (``--train`` and ``--shifted``). The shifted workflows are cut (seeded) into
``--folds`` folds by workflow; each fold is held out once while the others are the stream::

    stream (in a seeded order): each round is forecast and judged; each finished workflow
        goes into the predictor's history counts (online learning)
    at each checkpoint (0, 50, ..., 400 stream rounds): the held-out fold is forecast
        (nothing is learnt from it)

The raw forecasts are then replayed through each recalibration map (``MAPS``: the default
"platt" one and the "histogram" one it replaced), as the cache manager feeds its
``OnlineRecalibrator``: at a checkpoint the map has learnt from the stream rounds so far.
Held-out figures pool every fold's held-out rounds (each shifted workflow is held out once, so
ECE is measured on all of them, not on one split): top-1, log-loss and ECE of the top P(next)
raw and through each map. Online ECE: the next ``--online-window`` stream rounds after the
checkpoint, each forecast recalibrated as it was made (what the service's
pbkv_predictor_calibration_error{metric="ece"} shows), pooled over the folds.

The sampling floor of the held-out ECE (fused model): a perfectly calibrated model with the same
probabilities still shows an ECE, because each bin's hit rate is an estimate. ``floor`` is the
mean ECE over ``--floor-draws`` outcome sets drawn from the calibrated probabilities themselves
(independent draws: a lower bound, since rounds of one workflow are correlated); ``lo`` and
``hi`` are the 5th and 95th percentiles of the measured ECE over as many bootstrap resamples of
the held-out workflows (whole workflows, so that correlation is kept). Figures are medians over
seeds (the fused model's training seed, the folds and the stream orders).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pbkv.bench.calibration_cost import format_cost, per_event_cost
from pbkv.bench.calibration_report import format_report, summarize
from pbkv.bench.progress import add_progress_argument, progress
from pbkv.cli import CliError, warn
from pbkv.predictor.recalibration import OnlineRecalibrator, RecalibrationConfig, rescaled

SAMPLES = Path(__file__).resolve().parents[1] / "training" / "samples"
OTHERS = ("captain-agent", "magentic-one")  # bundled logs never shifted
SHIFTS = ("longer-runs", "new-app")
BASELINES = ("frequency", "markov1", "markov", "recency", "static-graph")
# the map before the "platt" one, with its defaults then (window 200, 5 bins, prior 10)
PREVIOUS = RecalibrationConfig(map="histogram", window=200, bins=5, prior_weight=10.0)
MAX_CHECKPOINT = 100_000
PLATT_FLAGS = {  # RecalibrationConfig fields of the platt map settable here
    "window": "judged forecasts per app it learns from",
    "bins": "bins of the bin correction",
    "prior_weight": "pseudo-forecasts per bin at no bin correction",
    "platt_prior": "pseudo-forecasts holding the log-odds map at the identity",
    "lag_scale": "outcomes s in the lag term log((t + s) / (i + s)); 0: none",
    "refit_every": "outcomes between refits, at most",
}
LOG_FLOOR = 1e-6  # as training.evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    default = RecalibrationConfig()
    p.add_argument("--shift", choices=SHIFTS, default=SHIFTS[0], help="which bundled shift")
    p.add_argument(
        "--train", nargs="+", metavar="FILE", help="traces to train on (instead of --shift)"
    )
    p.add_argument("--shifted", nargs="+", metavar="FILE", help="the shifted traces (with --train)")
    p.add_argument("--seeds", type=int, default=4, help="seeds; figures are medians over them")
    p.add_argument(
        "--checkpoints",
        default="0,50,100,200,300,400",
        help="stream rounds observed at which the held-out folds are scored (comma list)",
    )
    p.add_argument("--folds", type=int, default=4, help="folds of the shifted workflows (>= 2)")
    for field, help_text in PLATT_FLAGS.items():
        value = getattr(default, field)
        flag = "--" + field.replace("_", "-")
        p.add_argument(flag, type=type(value), default=value, help=f"platt map: {help_text}")
    p.add_argument(
        "--online-window", type=int, default=200, help="stream rounds the online ECE covers"
    )
    p.add_argument(
        "--floor-draws", type=int, default=100, help="draws for the ECE floor and its interval"
    )
    p.add_argument(
        "--cost",
        action="store_true",
        help="only time each map per judged event (calibration_cost.py), no ECE run",
    )
    p.add_argument("--cost-events", type=int, default=5_000, help="--cost: events per round")
    p.add_argument("--cost-rounds", type=int, default=7, help="--cost: alternating rounds")
    p.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/calibration.json")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_progress_argument(p)


def _checkpoints(text: str) -> list[int]:
    try:
        checkpoints = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise CliError(f"--checkpoints: expected a comma list of integers, got {text!r}") from None
    if not checkpoints or checkpoints[0] < 0 or checkpoints[-1] > MAX_CHECKPOINT:
        raise CliError(f"--checkpoints: expected integers in 0..{MAX_CHECKPOINT}, got {text!r}")
    return checkpoints


def run(args: argparse.Namespace) -> int:
    from pbkv.training.trace_io import TraceError
    from pbkv.training.train import load_traces

    try:
        platt = RecalibrationConfig(**{f: getattr(args, f) for f in PLATT_FLAGS})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for name, low, high in (
        ("seeds", 1, 1_000),
        ("folds", 2, 100),
        ("online_window", 1, 100_000),
        ("floor_draws", 1, 10_000),
        ("cost_events", 1, 10_000_000),
        ("cost_rounds", 1, 1_000),
    ):
        if not low <= getattr(args, name) <= high:
            flag = "--" + name.replace("_", "-")
            raise CliError(f"{flag} must be in {low}..{high}, got {getattr(args, name)}")
    maps = {"platt": platt, "histogram": PREVIOUS}
    if args.cost:
        cost = per_event_cost(maps, args.cost_events, args.cost_rounds)
        print(json.dumps(cost, indent=2) if args.json else format_cost(cost))
        return 0
    checkpoints = _checkpoints(args.checkpoints)
    if args.out is not None and not args.out.resolve().parent.is_dir():
        raise CliError(f"--out {args.out}: folder {args.out.parent} does not exist")
    if (args.train is None) != (args.shifted is None):
        raise CliError("--train and --shifted go together (or neither: --shift)")
    try:
        train, shifted = (
            (load_traces(args.train), load_traces(args.shifted))
            if args.train is not None
            else bundled_shift(args.shift)
        )
    except (FileNotFoundError, TraceError) as exc:
        raise CliError(str(exc)) from None
    if len(shifted) < args.folds:
        raise CliError(f"{len(shifted)} shifted workflows, fewer than --folds {args.folds}")
    overlap = {w.workflow_id for w in train} & {w.workflow_id for w in shifted}
    if overlap:
        raise CliError(f"{len(overlap)} shifted workflows are in the training traces too")
    runs = []
    with progress(args, args.seeds, "bench calibration", unit="seed") as bar:
        for seed in range(args.seeds):
            runs.append(measure(train, shifted, seed, checkpoints, maps, args))
            bar.advance()
    report = summarize(runs, args, maps)
    if args.out is not None:
        args.out.mkdir(exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    last = report["median"]["fused"][-1]
    if last["ece_platt"] > 0.05:
        warn(
            f"fused: held-out ECE after {last['observed']} stream rounds is "
            f"{last['ece_platt']:.3f}, above 0.05"
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


def _folds(workflows, seed: int, folds: int) -> list[tuple[list, list]]:
    """Per fold: (stream in a seeded order, held-out workflows)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(workflows), dtype=int)
    fold_of[rng.permutation(len(workflows))] = np.arange(len(workflows)) % folds
    out = []
    for f in range(folds):
        stream = [w for w, k in zip(workflows, fold_of, strict=True) if k != f]
        held = [w for w, k in zip(workflows, fold_of, strict=True) if k == f]
        out.append(([stream[i] for i in rng.permutation(len(stream))], held))
    return out


def _predictors(fused) -> dict[str, Any]:
    """Fresh copies: the fused model as trained, the baselines on its training counts."""
    from pbkv.predictor.baselines import (
        FrequencyPredictor,
        MarkovPredictor,
        RecencyPredictor,
        StaticGraphPredictor,
    )
    from pbkv.predictor.history import HistoryStats

    snapshot = fused.stats.to_json()

    def counts() -> HistoryStats:
        return HistoryStats.from_json(snapshot)

    return {
        "fused": copy.deepcopy(fused),
        "frequency": FrequencyPredictor(counts()),
        "markov1": MarkovPredictor(counts(), order=1),
        "markov": MarkovPredictor(counts(), order=fused.stats.max_order),
        "recency": RecencyPredictor(counts()),
        "static-graph": StaticGraphPredictor(counts()),
    }


def _rounds(workflow) -> list[tuple[Any, tuple[str, ...]]]:
    from pbkv.predictor.examples import examples

    return [(ex.state, ex.targets) for ex in examples(workflow)]


def _forecast(predictor, state, targets) -> tuple:
    """(app, workflow, raw top P(next), 1 if the top pick is in the round, per target of the
    round: (is the top pick, its P(next)))."""
    dist = predictor.next_distribution(state)
    best = max(dist, key=lambda a: dist[a]) if dist else None
    top = float(dist[best]) if dist else 0.0
    per_target = tuple((a == best, float(dist.get(a, 0.0))) for a in targets)
    return (state.app, state.workflow_id, top, int(best in targets), per_target)


def _collect(predictor, stream, held, checkpoints) -> tuple[list, dict[int, list]]:
    """The stream's forecasts, and the held-out rounds' at each checkpoint reached."""
    rounds, snapshots, pending = [], {}, list(checkpoints)
    for wf in stream:
        for state, targets in _rounds(wf):
            while pending and len(rounds) >= pending[0]:
                snapshots[pending.pop(0)] = [_forecast(predictor, *r) for r in held]
            rounds.append(_forecast(predictor, state, targets))
        predictor.observe_finished_workflow(wf)
    while pending and pending[0] <= len(rounds):
        snapshots[pending.pop(0)] = [_forecast(predictor, *r) for r in held]
    return rounds, snapshots


def _replay(config: RecalibrationConfig, rounds, snapshots, online_window) -> dict[int, tuple]:
    """Per checkpoint: (held-out tops calibrated by the map learnt so far, the next
    ``online_window`` stream rounds as (calibrated as made, raw, hit); None past the end)."""
    recal = OnlineRecalibrator(config)
    made, held = [], {}
    for i in range(len(rounds) + 1):
        if i in snapshots:
            held[i] = [recal.calibrated(app, p) for app, _, p, _, _ in snapshots[i]]
        if i < len(rounds):
            app, _, p, hit, _ = rounds[i]
            made.append(recal.calibrated(app, p))
            recal.observe(app, p, bool(hit))
    out = {}
    for c, tops in held.items():
        window = range(c, c + online_window)
        full = window.stop <= len(rounds)
        out[c] = (tops, [(made[j], rounds[j][2], rounds[j][3]) for j in window] if full else None)
    return out


def _log_loss(forecasts, calibrated) -> float:
    total = 0.0
    for (_, _, top, _, per_target), new in zip(forecasts, calibrated, strict=True):
        w = 1.0 / len(per_target)
        for is_top, p in per_target:
            q = new if is_top else rescaled(p, top, new)
            total -= w * math.log(max(q, LOG_FLOOR))
    return total / len(forecasts)


def _floor_and_interval(cal, hit, workflows, rng, draws: int) -> tuple[float, float, float]:
    """(mean ECE of outcomes drawn from ``cal`` itself, 5th and 95th percentile of the ECE
    over bootstrap resamples of whole workflows)."""
    from pbkv.training.evaluate import expected_calibration_error as ece

    floor = np.mean([ece(cal, (rng.random(len(cal)) < cal).astype(float)) for _ in range(draws)])
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(workflows):
        groups.setdefault(w, []).append(i)
    members = list(groups.values())
    boot = []
    for _ in range(draws):
        idx = np.concatenate([members[k] for k in rng.integers(len(members), size=len(members))])
        boot.append(ece(cal[idx], hit[idx]))
    return float(floor), float(np.percentile(boot, 5)), float(np.percentile(boot, 95))


def measure(train, shifted, seed: int, checkpoints: list[int], maps: dict, args) -> dict:
    """One seed: per predictor, the pooled held-out and online figures at each checkpoint."""
    from pbkv.predictor.fused import FusedConfig, FusedPredictor

    fused = FusedPredictor.fit(train, FusedConfig(seed=seed))
    folds = _folds(shifted, seed, args.folds)
    # predictor -> checkpoint -> map -> per fold: (held-out forecasts, calibrated, online)
    pooled: dict[str, dict[int, dict[str, list]]] = {}
    stream_rounds = []
    for stream, held_wfs in folds:
        held = [r for w in held_wfs for r in _rounds(w)]
        for name, predictor in _predictors(fused).items():
            rounds, snapshots = _collect(predictor, stream, held, checkpoints)
            for m, config in maps.items():
                replayed = _replay(config, rounds, snapshots, args.online_window)
                for c, (cal, online) in replayed.items():
                    per_map = pooled.setdefault(name, {}).setdefault(c, {})
                    per_map.setdefault(m, []).append((snapshots[c], cal, online))
        stream_rounds.append(len(rounds))
    rng = np.random.default_rng(seed)
    out = {
        name: [
            _row(c, per_map, name == "fused", rng, args.floor_draws)
            for c, per_map in sorted(per_checkpoint.items())
            if all(len(v) == args.folds for v in per_map.values())  # every fold reached c
        ]
        for name, per_checkpoint in pooled.items()
    }
    held_out = sum(len(_rounds(w)) for _, h in folds for w in h)
    return {"seed": seed, "stream_rounds": stream_rounds, "held_out_rounds": held_out, "rows": out}


def _row(observed: int, per_map: dict, floor: bool, rng, draws: int) -> dict:
    """One checkpoint's figures, every fold's held-out rounds (and online windows) pooled."""
    from pbkv.training.evaluate import expected_calibration_error as ece

    forecasts = [f for fc, _, _ in next(iter(per_map.values())) for f in fc]
    raw = np.array([f[2] for f in forecasts])
    hit = np.array([f[3] for f in forecasts], dtype=float)
    row: dict[str, Any] = {
        "observed": observed,
        "top1": float(hit.mean()),
        "ece_raw": ece(raw, hit),
        "log_loss_raw": _log_loss(forecasts, raw),
    }
    for m, parts in per_map.items():
        cal = np.array([q for _, qs, _ in parts for q in qs])
        row[f"ece_{m}"] = ece(cal, hit)
        row[f"log_loss_{m}"] = _log_loss(forecasts, cal)
        made = np.array([t for _, _, o in parts if o is not None for t in o]).reshape(-1, 3)
        row["online_ece_raw"] = ece(made[:, 1], made[:, 2]) if len(made) else None
        row[f"online_ece_{m}"] = ece(made[:, 0], made[:, 2]) if len(made) else None
        if floor:
            row[f"floor_{m}"], row[f"ece_{m}_lo"], row[f"ece_{m}_hi"] = _floor_and_interval(
                cal, hit, [f[1] for f in forecasts], rng, draws
            )
    return row
