"""The fused next-agent model: history experts (variable-order Markov, recency, retrieval)
and context experts (linear over hashed features, optional GRU) combined log-linearly with
weights learned on a validation split of workflows (never of steps).

Training (``FusedPredictor.fit``), splits always by workflow, never by step::

    large sets:  workflows --hash of id--> train | validation
                 train      -> history counts, retrieval bank, context experts
                 validation -> fusion weights (global + per app), per-app accuracy
                 then the validation workflows join the history counts and retrieval bank
    small sets:  K folds; experts fit on K-1 folds predict the held-out fold, so every
                 workflow gives out-of-sample rows for the fusion; final experts on all

Inference reads only the state: features once, each expert once, one weighted log-sum, then
the shared Markov rollout for h = 2..H. The confidence is the calibrated top probability.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbkv.predictor.baselines import workflow_rounds
from pbkv.predictor.chain import ChainPredictor
from pbkv.predictor.examples import Example, examples, round_agents
from pbkv.predictor.experts import (
    Expert,
    FrequencyExpert,
    MarkovExpert,
    RecencyExpert,
    StateContext,
    require_experts,
)
from pbkv.predictor.features import FeatureConfig, state_features
from pbkv.predictor.forecast import WorkflowState
from pbkv.predictor.fusion import FLOOR, FusionData, LogLinearFusion, TopCalibration, fit_weights
from pbkv.predictor.history import HistoryStats
from pbkv.predictor.linear import LinearExpert, fit_linear
from pbkv.predictor.retrieval import RetrievalExpert
from pbkv.trace import Workflow

EXPERTS = ("markov", "recency", "frequency", "retrieval", "linear", "gru", "embedding")
WEIGHTS_FILE = "weights.npz"
MODEL_FILE = "model.json"
GRU_FILE = "gru.pt"  # a GRU saved by an older pbkv (now in weights.npz)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True, slots=True)
class FusedConfig:
    seed: int = 0
    experts: tuple[str, ...] = ("markov", "recency", "retrieval", "linear")
    val_fraction: float = 0.2
    max_order: int = 3
    max_context_examples: int = 300_000  # context experts train on at most this many examples
    max_fusion_examples: int = 20_000
    cross_fit_max_workflows: int = 2_000  # up to this many: K-fold cross-fitted fusion
    cross_fit_folds: int = 5
    calibrate: bool = True  # isotonic top-1 calibration per app after the fusion
    min_app_fusion_examples: int = 200  # fewer: the app uses the global fusion weights
    linear_epochs: int = 5
    linear_alpha: float = 1e-5
    gru_epochs: int = 3
    gru_max_examples: int = 60_000
    gru_threads: int = 2
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        unknown = set(self.experts) - set(EXPERTS)
        if unknown or not self.experts:
            raise ValueError(f"experts must be a non-empty subset of {EXPERTS}, got {self.experts}")
        if self.cross_fit_folds < 2:
            raise ValueError(f"cross_fit_folds must be >= 2, got {self.cross_fit_folds}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if isinstance(self.features, dict):  # from JSON
            object.__setattr__(self, "features", FeatureConfig(**self.features))
        object.__setattr__(self, "experts", tuple(self.experts))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_validation(workflow_id: str, seed: int, fraction: float) -> bool:
    """Deterministic split by workflow (never by step)."""
    return zlib.crc32(f"{seed}:{workflow_id}".encode()) % 10_000 < fraction * 10_000


class FusedPredictor(ChainPredictor):
    name = "fused"

    def __init__(
        self,
        stats: HistoryStats,
        config: FusedConfig,
        experts: list[Expert],
        fusion: LogLinearFusion,
        app_accuracy: dict[str, float],
    ) -> None:
        super().__init__(stats)
        self.fused_config = config
        self.experts = experts
        self.fusion = fusion
        self.app_accuracy = app_accuracy

    # ---- inference ------------------------------------------------------------------------
    def context(self, state: WorkflowState) -> StateContext | None:
        rounds = round_agents(state)
        candidates = self.stats.candidates(state.app, rounds)
        if not candidates:
            return None
        return StateContext(
            state, rounds, candidates, state_features(state, self.fused_config.features, rounds)
        )

    def expert_probs(self, ctx: StateContext) -> np.ndarray:
        return np.stack([e.probs(ctx) for e in self.experts])

    def _next(self, state, rounds, candidates):
        cols = state_features(state, self.fused_config.features, rounds)
        ctx = StateContext(state, rounds, candidates, cols)
        return self.fusion.combine(state.app, self.expert_probs(ctx))

    def _confidence(self, state: WorkflowState, p: np.ndarray) -> float:
        # The fusion is calibrated on validation data, so the top probability estimates
        # P(the top pick is right).
        return float(min(1.0, max(0.0, p.max()))) if len(p) else 0.0

    def observe_finished(self, state: WorkflowState) -> None:
        super().observe_finished(state)
        for e in self.experts:
            if isinstance(e, RetrievalExpert):
                e.add(state.app, state.task, round_agents(state))

    def config(self) -> dict[str, Any]:
        return self.fused_config.to_json()

    # ---- training -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        workflows: Sequence[Workflow],
        config: FusedConfig | None = None,
        progress: Progress | None = None,
        warm: FusedPredictor | None = None,
    ) -> FusedPredictor:
        """Train on ``workflows``. Large sets: experts on a train split, fusion on the
        validation split (then the validation workflows join the history counts). Small sets
        (<= ``cross_fit_max_workflows``): fusion on out-of-fold expert predictions of every
        workflow (K folds by workflow), final experts on all workflows."""
        config = config or FusedConfig()
        require_experts(config.experts)
        workflows = [w for w in workflows if w.steps]
        if not workflows:
            raise ValueError("no workflows with steps to train on (empty training set)")
        report = progress or (lambda stage, done, total: None)
        rng = np.random.default_rng(config.seed)
        cache = {w.workflow_id: list(examples(w)) for w in workflows}

        def examples_of(wfs: list[Workflow]) -> list[Example]:
            return [e for w in wfs for e in cache[w.workflow_id]]

        if len(workflows) <= config.cross_fit_max_workflows and len(workflows) >= 2:
            folds = min(config.cross_fit_folds, len(workflows))
            fold_of = {w.workflow_id: _fold(w.workflow_id, config.seed, folds) for w in workflows}
            rows: list[tuple[np.ndarray, np.ndarray, str]] = []
            for k in range(folds):
                held = [w for w in workflows if fold_of[w.workflow_id] == k]
                rest = [w for w in workflows if fold_of[w.workflow_id] != k]
                if not held or not rest:
                    continue
                fold_model = cls._fit_experts(rest, examples_of(rest), config, _quiet, warm, rng)
                rows += fold_model._fusion_rows(examples_of(held), _quiet)
                report("cross-fit", k + 1, folds)
            model = cls._fit_experts(workflows, examples_of(workflows), config, report, warm, rng)
            val: list[Workflow] = []
        else:
            is_val = [
                is_validation(w.workflow_id, config.seed, config.val_fraction) for w in workflows
            ]
            train = [w for w, v in zip(workflows, is_val, strict=True) if not v]
            val = [w for w, v in zip(workflows, is_val, strict=True) if v]
            if not train:
                train, val = workflows, []
            model = cls._fit_experts(train, examples_of(train), config, report, warm, rng)
            rows = model._fusion_rows(
                _sample(examples_of(val), config.max_fusion_examples, rng), report
            )
        if rows:
            model._fit_fusion(rows)
        for wf in val:
            model.observe_finished_workflow(wf)
        model._transitions.clear()
        return model

    def observe_finished_workflow(self, workflow: Workflow) -> None:
        super().observe_finished_workflow(workflow)
        for e in self.experts:
            if isinstance(e, RetrievalExpert):
                e.add(workflow.app, workflow.task, workflow_rounds(workflow))

    @classmethod
    def _fit_experts(
        cls,
        train: list[Workflow],
        train_examples: list[Example],
        config: FusedConfig,
        report: Progress,
        warm: FusedPredictor | None,
        rng: np.random.Generator,
    ) -> FusedPredictor:
        stats = (
            HistoryStats.from_json(warm.stats.to_json())
            if warm
            else HistoryStats(max_order=config.max_order)
        )
        retrieval = RetrievalExpert(stats)
        for i, wf in enumerate(train):
            rounds = workflow_rounds(wf)
            stats.add_rounds(wf.app, rounds)
            retrieval.add(wf.app, wf.task, rounds)
            if i % 1000 == 0:
                report("history", i, len(train))
        report("history", len(train), len(train))
        train_examples = _sample(train_examples, config.max_context_examples, rng)
        experts: list[Expert] = []
        for name in config.experts:
            if name in _STATS_EXPERTS:
                experts.append(_STATS_EXPERTS[name](stats))
            elif name == "retrieval":
                experts.append(retrieval)
            elif name == "linear":
                experts.append(fit_linear(train_examples, config, report, warm))
            elif name == "gru":
                from pbkv.predictor.gru import GruExpert

                warm_gru = (
                    next((e for e in warm.experts if isinstance(e, GruExpert)), None)
                    if warm
                    else None
                )
                experts.append(GruExpert.fit(train_examples, stats, config, report, warm_gru))
            elif name == "embedding":
                from pbkv.predictor.embedding import EmbeddingExpert

                experts.append(EmbeddingExpert.fit(train_examples, config.seed))
                report("embedding", 1, 1)
        names = tuple(e.name for e in experts)
        prior = np.array([1.0 if n == "markov" else 0.0 for n in names])
        if not prior.any():
            prior[0] = 1.0
        return cls(stats, config, experts, LogLinearFusion(names, prior), {})

    def _fusion_rows(
        self, val_examples: list[Example], report: Progress
    ) -> list[tuple[np.ndarray, np.ndarray, str]]:
        rows = []
        for i, ex in enumerate(val_examples):
            ctx = self.context(ex.state)
            if ctx is not None:
                rows.append(
                    (
                        np.log(np.maximum(self.expert_probs(ctx), FLOOR)),
                        _target_weights(ctx.candidates, ex.targets),
                        ex.state.app,
                    )
                )
            if i % 2000 == 0:
                report("fusion", i, len(val_examples))
        report("fusion", len(val_examples), len(val_examples))
        return rows

    def _fit_fusion(self, rows: list[tuple[np.ndarray, np.ndarray, str]]) -> None:
        prior = self.fusion.global_weights
        data = FusionData.stack([(lp, y) for lp, y, _ in rows], len(prior))
        weights = fit_weights(data, prior)
        self.fusion.global_weights = weights
        app_arr = np.array([app for _, _, app in rows])
        for app in sorted(set(app_arr.tolist())):
            sel = np.flatnonzero(app_arr == app)
            if len(sel) >= self.fused_config.min_app_fusion_examples:
                sub = FusionData(data.log_probs[sel], data.targets[sel], data.mask[sel])
                self.fusion.app_weights[app] = fit_weights(sub, weights)
            # validation top-1 per app, for reports and for the top-1 calibration
            fused = [
                self.fusion.combine(
                    app, np.exp(data.log_probs[i][:, data.mask[i]]), calibrate=False
                )
                for i in sel
            ]
            hits = np.array(
                [float(data.targets[i, np.argmax(p)] > 0) for i, p in zip(sel, fused, strict=True)]
            )
            self.app_accuracy[app] = float(hits.mean())
            enough = len(sel) >= self.fused_config.min_app_fusion_examples
            if self.fused_config.calibrate and enough:
                top = np.array([p.max() for p in fused])
                self.fusion.calibration[app] = TopCalibration.fit(top, hits)

    # ---- persistence (artifact.py calls these) --------------------------------------------
    def save_files(self, directory: Path) -> list[str]:
        arrays: dict[str, np.ndarray] = {}
        model: dict[str, Any] = {
            "experts": [e.name for e in self.experts],
            "fusion": self.fusion.to_json(),
            "app_accuracy": self.app_accuracy,
        }
        files = [WEIGHTS_FILE, MODEL_FILE]
        for e in self.experts:
            if isinstance(e, LinearExpert):
                linear_arrays, model["linear_classes"] = e.to_arrays()
                arrays.update(linear_arrays)
            elif isinstance(e, RetrievalExpert):
                model["retrieval"] = e.to_json()
                apps = sorted(e.banks)
                model["retrieval_apps"] = apps
                for i, app in enumerate(apps):
                    arrays[f"retrieval{i}"] = e.banks[app].vectors
            elif e.name in ("gru", "embedding"):
                more, model[e.name] = e.to_arrays()
                arrays.update(more)
        np.savez_compressed(directory / WEIGHTS_FILE, **arrays)
        (directory / MODEL_FILE).write_text(json.dumps(model))
        return files

    @classmethod
    def load_files(cls, directory: Path, stats: HistoryStats, meta: dict) -> FusedPredictor:
        config = FusedConfig(**{**meta["config"], "experts": tuple(meta["config"]["experts"])})
        model = json.loads((directory / MODEL_FILE).read_text())
        with np.load(directory / WEIGHTS_FILE) as npz:
            arrays = {k: npz[k] for k in npz.files}
        experts: list[Expert] = []
        for name in model["experts"]:
            if name in _STATS_EXPERTS:
                experts.append(_STATS_EXPERTS[name](stats))
            elif name == "retrieval":
                vectors = {
                    app: arrays[f"retrieval{i}"] for i, app in enumerate(model["retrieval_apps"])
                }
                experts.append(RetrievalExpert.from_json(stats, model["retrieval"], vectors))
            elif name == "linear":
                experts.append(LinearExpert.from_arrays(arrays, model["linear_classes"]))
            elif name == "gru":
                from pbkv.predictor.gru import GruExpert

                experts.append(
                    GruExpert.load_torch_file(directory / GRU_FILE, model["gru"])
                    if GRU_FILE in meta.get("files", ())
                    else GruExpert.from_arrays(arrays, model["gru"])
                )
            elif name == "embedding":
                from pbkv.predictor.embedding import EmbeddingExpert

                experts.append(EmbeddingExpert.from_arrays(arrays, model["embedding"]))
        return cls(
            stats,
            config,
            experts,
            LogLinearFusion.from_json(model["fusion"]),
            model["app_accuracy"],
        )


# Experts that are pure functions of the history statistics: nothing to train or store.
_STATS_EXPERTS = {"markov": MarkovExpert, "recency": RecencyExpert, "frequency": FrequencyExpert}


def _quiet(stage: str, done: int, total: int) -> None:
    return None


def _fold(workflow_id: str, seed: int, folds: int) -> int:
    return zlib.crc32(f"fold:{seed}:{workflow_id}".encode()) % folds


def _target_weights(candidates: tuple[str, ...], targets: tuple[str, ...]) -> np.ndarray:
    y = np.zeros(len(candidates))
    index = {a: i for i, a in enumerate(candidates)}
    for a in targets:
        if a in index:
            y[index[a]] += 1.0 / len(targets)
    return y


def _sample(items: list, limit: int, rng: np.random.Generator) -> list:
    if len(items) <= limit:
        return items
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]
