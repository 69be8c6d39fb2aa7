"""Offline evaluation of next-agent predictors on held-out workflows.

Each example is the state before a scheduling round (``predictor.examples``); a fan-out
round's agents are all correct answers, each weighted ``1 / len(round)`` in log-loss and
Brier. Metrics, per app and overall (micro-averaged over examples):

    top1, top3      the top-k agents include an agent of the next round
    log_loss        -sum_a y_a log max(p_a, 1e-6)      (floor: unseen agents stay finite)
    brier           sum_a (p_a - y_a) ** 2 over candidates and targets
    ece             expected calibration error of the top-1 probability, 10 equal bins
    within_recall   of agents called in the next H rounds, share forecast P(within H) >= 0.5
    within_precision  of agents forecast P(within H) >= 0.5, share called in the next H rounds
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pbkv.predictor.examples import examples
from pbkv.predictor.forecast import DEFAULT_HORIZON, Predictor
from pbkv.trace import Workflow, step_groups

LOG_FLOOR = 1e-6
ECE_BINS = 10
WITHIN_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class Metrics:
    examples: int
    top1: float
    top3: float
    log_loss: float
    brier: float
    ece: float
    within_recall: float
    within_precision: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(slots=True)
class _Acc:
    top1: list[float]
    top3: list[float]
    log_loss: list[float]
    brier: list[float]
    conf: list[float]
    within_hits: int = 0
    within_actual: int = 0
    within_predicted: int = 0

    @classmethod
    def new(cls) -> _Acc:
        return cls([], [], [], [], [])

    def metrics(self) -> Metrics:
        n = len(self.top1)
        if n == 0:
            return Metrics(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        return Metrics(
            n,
            float(np.mean(self.top1)),
            float(np.mean(self.top3)),
            float(np.mean(self.log_loss)),
            float(np.mean(self.brier)),
            expected_calibration_error(np.array(self.conf), np.array(self.top1)),
            self.within_hits / self.within_actual if self.within_actual else math.nan,
            self.within_hits / self.within_predicted if self.within_predicted else math.nan,
        )


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    if len(confidence) == 0:
        return math.nan
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def _future_agents(workflow: Workflow, horizon: int) -> list[set[str]]:
    """For each round r: the agents called in rounds r .. r + horizon - 1."""
    rounds = [{workflow.steps[i].agent for i in g} for g in step_groups(workflow)]
    return [set().union(*rounds[r : r + horizon]) for r in range(len(rounds))]


Collector = dict[str, "_Acc"]  # app (and "all") -> accumulated per-example results


def evaluate(
    predictor: Predictor,
    workflows: Sequence[Workflow],
    horizon: int = DEFAULT_HORIZON,
    progress: Callable[[int], None] | None = None,
    collector: Collector | None = None,
) -> dict[str, Metrics]:
    """Metrics per app plus ``"all"``. Pass the same ``collector`` to pool several calls
    (cross-validation folds): the returned metrics then cover every call so far."""
    accs: Collector = {} if collector is None else collector
    total = accs.setdefault("all", _Acc.new())
    for wf in workflows:
        futures = _future_agents(wf, horizon)
        for r, ex in enumerate(examples(wf)):
            acc = accs.setdefault(wf.app, _Acc.new())
            f = predictor.forecast(ex.state, horizon)
            dist = predictor.next_distribution(ex.state)
            ranked = sorted(dist, key=lambda a: -dist[a])
            targets = set(ex.targets)
            y = {a: ex.targets.count(a) / len(ex.targets) for a in targets}
            top1 = float(bool(ranked) and ranked[0] in targets)
            top3 = float(bool(targets & set(ranked[:3])))
            ll = -sum(w * math.log(max(dist.get(a, 0.0), LOG_FLOOR)) for a, w in y.items())
            brier = sum((p - y.get(a, 0.0)) ** 2 for a, p in dist.items()) + sum(
                w**2 for a, w in y.items() if a not in dist
            )
            conf = dist[ranked[0]] if ranked else 0.0
            within = {a.agent for a in f.agents if a.p_within[-1] >= WITHIN_THRESHOLD}
            hits = len(within & futures[r])
            for a_ in (acc, total):
                a_.top1.append(top1)
                a_.top3.append(top3)
                a_.log_loss.append(ll)
                a_.brier.append(brier)
                a_.conf.append(conf)
                a_.within_hits += hits
                a_.within_actual += len(futures[r])
                a_.within_predicted += len(within)
        if progress:
            progress(1)
    out = {app: acc.metrics() for app, acc in sorted(accs.items()) if app != "all"}
    out["all"] = total.metrics()
    return out


def evaluate_all(
    model: Predictor,
    workflows: Sequence[Workflow],
    horizon: int = DEFAULT_HORIZON,
    collectors: dict[str, Collector] | None = None,
) -> dict[str, dict[str, Metrics]]:
    """The model and every baseline. History baselines are built from the model's own
    history counts (the same training data); the oracle reads ``workflows``' futures."""
    from pbkv.predictor.baselines import (
        FrequencyPredictor,
        MarkovPredictor,
        OraclePredictor,
        RecencyPredictor,
        StaticGraphPredictor,
    )
    from pbkv.predictor.chain import ChainPredictor

    pool = collectors if collectors is not None else {}
    results = {
        model.name: evaluate(model, workflows, horizon, collector=pool.setdefault(model.name, {}))
    }
    if isinstance(model, ChainPredictor):
        stats = model.stats
        baselines: list[Predictor] = [
            FrequencyPredictor(stats),
            MarkovPredictor(stats, order=1),
            MarkovPredictor(stats, order=stats.max_order),
            RecencyPredictor(stats),
            StaticGraphPredictor(stats),
            OraclePredictor(stats, workflows),
        ]
        for b in baselines:
            if b.name != model.name:
                results[b.name] = evaluate(
                    b, workflows, horizon, collector=pool.setdefault(b.name, {})
                )
    return results


def fold_of(workflow_id: str, folds: int, seed: int = 0) -> int:
    return zlib.crc32(f"cv:{seed}:{workflow_id}".encode()) % folds


def cross_validate(
    workflows: Sequence[Workflow],
    folds: int,
    train: Callable[[list[Workflow]], Predictor],
    horizon: int = DEFAULT_HORIZON,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Metrics]]:
    """K-fold by workflow (never by step): train on K-1 folds, evaluate the model and every
    baseline on the held-out fold; metrics pool the per-example results of all folds."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    assignment = [fold_of(w.workflow_id, folds, seed) for w in workflows]
    pool: dict[str, Collector] = {}
    results: dict[str, dict[str, Metrics]] = {}
    for k in range(folds):
        test = [w for w, f in zip(workflows, assignment, strict=True) if f == k]
        rest = [w for w, f in zip(workflows, assignment, strict=True) if f != k]
        if test and rest:
            results = evaluate_all(train(rest), test, horizon, collectors=pool)
        if progress:
            progress(k + 1, folds)
    return results
