"""Offline training of the fused predictor (``pbkv train``): traces in, versioned artifact out.

Deterministic for a seed: the validation split hashes workflow ids, every sampler and model is
seeded, and torch (when the GRU expert is on) runs single-threaded-deterministic kernels.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pbkv.predictor.artifact import check_model_dir, load_model, read_metadata, save_model
from pbkv.predictor.fused import FusedConfig, FusedPredictor
from pbkv.trace import Workflow
from pbkv.training.trace_io import dumps_workflow, load_workflows

Progress = Callable[[str, int, int], None]


def load_traces(paths: Sequence[str | Path], skip_invalid: bool = False) -> list[Workflow]:
    workflows: list[Workflow] = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trace file {path} does not exist")
        workflows.extend(load_workflows(path, skip_invalid=skip_invalid))
    return workflows


def data_hash(workflows: Sequence[Workflow]) -> str:
    """sha256 over the canonical trace lines, in order."""
    h = hashlib.sha256()
    for wf in workflows:
        h.update(dumps_workflow(wf).encode())
        h.update(b"\n")
    return h.hexdigest()


def workflow_digest(workflow: Workflow) -> str:
    """A short content digest of one workflow (its canonical trace line)."""
    return hashlib.sha256(dumps_workflow(workflow).encode()).hexdigest()[:16]


def training_set(workflows: Sequence[Workflow]) -> dict[str, list[str]]:
    """What a model records of its training data, so ``pbkv evaluate`` can tell a held-out
    workflow from one it trained on: the workflow ids and content digests, sorted."""
    return {
        "workflow_ids": sorted(w.workflow_id for w in workflows),
        "digests": sorted(workflow_digest(w) for w in workflows),
    }


def train(
    workflows: Sequence[Workflow],
    out: str | Path,
    config: FusedConfig,
    from_model: str | Path | None = None,
    progress: Progress | None = None,
    sources: Sequence[str] = (),
    force: bool = False,
) -> tuple[FusedPredictor, dict[str, Any]]:
    """Fit, save to ``out`` and return the model with its metadata. ``out`` is checked first
    (``check_model_dir``), so a directory the model may not replace fails before training."""
    check_model_dir(out, force)
    warm = None
    if from_model is not None:
        warm = load_model(from_model)
        if not isinstance(warm, FusedPredictor):
            raise ValueError(
                f"--from {from_model}: a {warm.name!r} model cannot be continued; "
                "give a fused model"
            )
    started = time.perf_counter()
    model = FusedPredictor.fit(workflows, config, progress=progress, warm=warm)
    apps: dict[str, int] = {}
    for wf in workflows:
        apps[wf.app] = apps.get(wf.app, 0) + 1
    seen = training_set(workflows)
    if from_model is not None:  # a continued model has seen its parent's data too
        parent = read_metadata(from_model).get("training_set") or {}
        seen = {key: sorted({*values, *parent.get(key, [])}) for key, values in seen.items()}
    metadata = {
        "training_data_hash": data_hash(workflows),
        "training_sources": list(sources),
        "training_set": seen,
        "continued_from": str(from_model) if from_model else None,
        "num_workflows": len(workflows),
        "workflows_per_app": apps,
        "train_seconds": round(time.perf_counter() - started, 3),
        # held out: a validation split, or out-of-fold predictions on small sets
        "metrics": {
            "validation_top1_per_app": model.app_accuracy,
            "fusion_weights": model.fusion.to_json(),
        },
        "feature_config": config.features.to_json(),
    }
    save_model(model, out, metadata, force=force)
    return model, metadata
