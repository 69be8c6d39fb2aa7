"""Versioned model artifacts: a directory of plain files, no pickled code.

    MODEL_DIR/
      metadata.json   format + version, predictor kind and config, list of files, library
                      versions, caller metadata (training-data hash, metrics, features ...)
      history.json    per-app history counts (every predictor has them)
      ...             kind-specific files (the fused model: weights.npz, gru.pt)

``load_model`` checks the format version and that every listed file exists before reading
anything, and names the directory and the problem when it refuses.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pbkv.predictor.baselines import (
    FrequencyPredictor,
    MarkovPredictor,
    RecencyPredictor,
    StaticGraphPredictor,
)
from pbkv.predictor.chain import ChainPredictor
from pbkv.predictor.forecast import Predictor
from pbkv.predictor.history import HistoryStats

FORMAT = "pbkv.model"
FORMAT_VERSION = 1
METADATA = "metadata.json"
HISTORY = "history.json"
_LIBRARIES = ("numpy", "scikit-learn", "torch", "pbkv")


class ArtifactError(ValueError):
    """A model directory that cannot be loaded (missing files, wrong version, bad JSON)."""


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def save_model(predictor: Predictor, path: str | Path,
               metadata: dict[str, Any] | None = None) -> Path:
    """Write ``predictor`` to the directory ``path`` (replaced whole, so a reader never sees
    half a model)."""
    if not isinstance(predictor, ChainPredictor) or predictor.name == "oracle":
        raise ArtifactError(f"predictor {predictor.name!r} cannot be saved "
                            "(the oracle reads the future; only trained models are artifacts)")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / HISTORY).write_text(json.dumps(predictor.stats.to_json()))
    files = [HISTORY, *predictor.save_files(tmp)] if hasattr(predictor, "save_files") else [
        HISTORY]
    meta = {
        **(metadata or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": predictor.name,
        "config": predictor.config(),
        "files": files,
        "created_unix_s": time.time(),
        "library_versions": library_versions(),
    }
    (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / METADATA
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist")
    if not meta_path.is_file():
        raise ArtifactError(f"model directory {path} has no {METADATA}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: field 'format' is {meta.get('format')!r}, "
                            f"expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: model format_version {meta.get('format_version')!r} "
                            f"is incompatible with this pbkv (reads version {FORMAT_VERSION}); "
                            "retrain with `pbkv train`")
    missing = [f for f in meta.get("files", []) if not (path / f).is_file()]
    if missing:
        raise ArtifactError(f"model directory {path} is missing files: {', '.join(missing)}")
    return meta


def load_model(path: str | Path) -> Predictor:
    """Load a model saved by ``save_model``; raises ``ArtifactError`` naming the problem."""
    path = Path(path)
    meta = read_metadata(path)
    kind, config = meta.get("kind"), meta.get("config", {})
    try:
        stats = HistoryStats.from_json(json.loads((path / HISTORY).read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path / HISTORY}: unreadable history ({exc!r})") from None
    simple = {"frequency": FrequencyPredictor, "recency": RecencyPredictor,
              "static-graph": StaticGraphPredictor}
    if kind in simple:
        return simple[kind](stats)
    if kind in ("markov1", "markov"):
        return MarkovPredictor(stats, order=int(config["order"]))
    if kind == "fused":
        from pbkv.predictor.fused import FusedPredictor

        try:
            return FusedPredictor.load_files(path, stats, meta)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"model directory {path}: unreadable fused model "
                                f"({type(exc).__name__}: {exc})") from None
    raise ArtifactError(f"{path / METADATA}: unknown model kind {kind!r}")
