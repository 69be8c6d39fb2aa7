"""Versioned model artifacts: a directory of plain files, no pickled code.

    MODEL_DIR/
      metadata.json   format + version, predictor kind and config, list of files, library
                      versions, caller metadata (training-data hash, metrics, features ...)
      history.json    per-app history counts (every predictor has them)
      ...             kind-specific files (the fused model: weights.npz, model.json; a GRU
                      saved by an older pbkv: gru.pt, which needs torch to read)

``load_model`` checks the format version and that every listed file exists before reading
anything, and names the directory and the problem when it refuses.

``save_model`` never deletes a file it did not write. It writes the new model into a hidden
sibling folder it creates (``.NAME.tmp-*``) and then puts it in place:

    MODEL_DIR absent or empty      rename the new folder to MODEL_DIR
    MODEL_DIR holds a pbkv model   swap the two folders in one step (renameat2 EXCHANGE; two
                                   renames where the kernel lacks it), then delete the old
                                   model's own files (metadata.json and the files it lists)
    anything else                  refuse (``ArtifactError``), unless ``force``: then the old
                                   folder is kept whole, renamed to ``MODEL_DIR.replaced-<time>``

A crash before the swap leaves the old model as it was (and a stale hidden ``.tmp-`` folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import shutil
import tempfile
import time
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from pbkv.errors import MissingExtra, UserError
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


class ArtifactError(ValueError, UserError):
    """A model directory that cannot be loaded (missing files, wrong version, bad JSON)."""


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def check_model_dir(path: str | Path, force: bool = False) -> None:
    """Raise ``ArtifactError`` unless ``save_model(..., path, force=force)`` may write there;
    callers check before a long training run, so a bad ``--out`` fails at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} exists and is not a directory; a model is a directory")
    if not path.exists() or force or not any(path.iterdir()):
        return
    reason = _not_replaceable(path)
    if reason:
        raise ArtifactError(
            f"{path} {reason}; choose another directory or pass --force "
            f"(the folder is then kept, renamed to {path.name}.replaced-<time>)"
        )


def _not_replaceable(path: Path) -> str | None:
    """Why the non-empty directory ``path`` is not a model that a new one may replace."""
    try:
        meta = json.loads((path / METADATA).read_text())
    except (OSError, ValueError):
        return "is not empty and holds no pbkv model"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "is not empty and holds no pbkv model"
    own = {METADATA, *meta.get("files", [])}
    others = sorted(p.name for p in path.iterdir() if p.name not in own)
    if others:
        return f"holds a pbkv model and other files ({', '.join(others[:5])})"
    return None


def save_model(
    predictor: Predictor,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``predictor`` to the directory ``path``: a new model, or in place of a previous
    one (see the module docstring; ``force`` also puts aside a folder that is not a model).
    A reader never sees half a model."""
    if not isinstance(predictor, ChainPredictor) or predictor.name == "oracle":
        raise ArtifactError(
            f"predictor {predictor.name!r} cannot be saved "
            "(the oracle reads the future; only trained models are artifacts)"
        )
    path = Path(path)
    check_model_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write(predictor, tmp, metadata)
    except BaseException:
        shutil.rmtree(tmp)  # ours alone: nothing of the old model is in it yet
        raise
    _put_in_place(tmp, path)
    return path


def _write(predictor: Predictor, tmp: Path, metadata: dict[str, Any] | None) -> None:
    (tmp / HISTORY).write_text(json.dumps(predictor.stats.to_json()))
    files = [HISTORY, *predictor.save_files(tmp)] if hasattr(predictor, "save_files") else [HISTORY]
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


def _put_in_place(new: Path, path: Path) -> None:
    """Move the finished model folder ``new`` to ``path``, and remove a model it replaces."""
    if not path.exists():
        new.rename(path)
        return
    if not any(path.iterdir()):
        path.rmdir()
        new.rename(path)
        return
    if _not_replaceable(path):  # force: keep the user's folder whole
        path.rename(path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
        new.rename(path)
        return
    if not _exchange(new, path):
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        path.rename(old / path.name)
        new.rename(path)
        old.joinpath(path.name).rename(new)  # ``new`` now names the old model
        old.rmdir()
    _remove_model_files(new)


def _remove_model_files(path: Path) -> None:
    """Delete a replaced model: its metadata and the files it lists, then the folder."""
    meta = json.loads((path / METADATA).read_text())
    for name in [*meta.get("files", []), METADATA]:
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # someone put a file in it meanwhile: theirs, so
        path.rmdir()  # the folder stays


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The artifact's metadata, checked (format, version, listed files present and the
    archives among them whole); ``ArtifactError`` names the file and what is wrong."""
    path = Path(path)
    meta_path = path / METADATA
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist")
    if not meta_path.is_file():
        raise ArtifactError(f"model directory {path} has no {METADATA}")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path}: must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ArtifactError(
            f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path}: model format_version {meta.get('format_version')!r} "
            f"is incompatible with this pbkv (reads version {FORMAT_VERSION}); "
            "retrain with `pbkv train`"
        )
    files = meta.get("files", [])
    if not (
        isinstance(files, list) and all(isinstance(f, str) and f and "/" not in f for f in files)
    ):
        raise ArtifactError(f"{meta_path}: field 'files' must be a list of file names")
    if not isinstance(meta.get("config", {}), dict):
        raise ArtifactError(f"{meta_path}: field 'config' must be a JSON object")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise ArtifactError(f"model directory {path} is missing files: {', '.join(missing)}")
    for name in files:
        if name.endswith(_ARCHIVES):
            _check_archive(path / name)
    return meta


_ARCHIVES = (".npz", ".pt")  # zip files (numpy's and torch's formats)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"{file}: not UTF-8 text (binary or corrupt)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot be read ({exc.strerror})") from None


def _check_archive(file: Path) -> None:
    """An empty or truncated ``.npz``/``.pt`` fails here, named, before a loader sees it."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ArtifactError(f"{file}: not a readable archive, empty or truncated ({exc})") from None
    if bad is not None:
        raise ArtifactError(f"{file}: archive member {bad!r} is corrupt (CRC mismatch)")


def load_model(path: str | Path) -> Predictor:
    """Load a model saved by ``save_model``; raises ``ArtifactError`` naming the problem."""
    path = Path(path)
    meta = read_metadata(path)
    kind, config = meta.get("kind"), meta.get("config", {})
    history = _read_json(path / HISTORY)
    try:
        stats = HistoryStats.from_json(history)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path / HISTORY}: unreadable history ({exc!r})") from None
    simple = {
        "frequency": FrequencyPredictor,
        "recency": RecencyPredictor,
        "static-graph": StaticGraphPredictor,
    }
    if kind in simple:
        return simple[kind](stats)
    if kind in ("markov1", "markov"):
        order = config.get("order")
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ArtifactError(
                f"{path / METADATA}: a {kind} model needs config.order, "
                f"an integer >= 1 (got {order!r})"
            )
        return MarkovPredictor(stats, order=order)
    if kind == "fused":
        from pbkv.predictor.fused import FusedPredictor

        try:
            return FusedPredictor.load_files(path, stats, meta)
        except (ArtifactError, MissingExtra):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a corrupt file makes a loader raise
            raise ArtifactError(
                f"model directory {path}: unreadable fused model ({type(exc).__name__}: {exc})"
            ) from None
    raise ArtifactError(f"{path / METADATA}: unknown model kind {kind!r}")
