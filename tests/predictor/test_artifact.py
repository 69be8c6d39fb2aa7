"""Artifacts: round trip, version check, missing files."""

from __future__ import annotations

import json

import pytest
from predictor_builders import make_workflow

from pbkv.predictor.artifact import ArtifactError, load_model, save_model
from pbkv.predictor.examples import state_at
from pbkv.predictor.registry import PREDICTORS

TRAIN = [make_workflow(f"w{i}", "app", ["A", "B", "C", "A"][: 2 + i % 3]) for i in range(6)]


@pytest.mark.parametrize("name", ["frequency", "markov1", "markov", "recency", "static-graph"])
def test_round_trip_gives_identical_forecasts(tmp_path, name):
    pred = PREDICTORS.create(name, workflows=TRAIN)
    save_model(pred, tmp_path / "m", {"training_data_hash": "abc"})
    loaded = load_model(tmp_path / "m")
    state = state_at(TRAIN[2], 2)
    assert loaded.name == name
    assert loaded.forecast(state) == pred.forecast(state)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["training_data_hash"] == "abc" and meta["format_version"] == 1


def test_incompatible_version_is_a_clear_error(tmp_path):
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), tmp_path / "m")
    meta_path = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version 99 is incompatible"):
        load_model(tmp_path / "m")


def test_missing_files_are_named(tmp_path):
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), tmp_path / "m")
    (tmp_path / "m" / "history.json").unlink()
    with pytest.raises(ArtifactError, match="missing files: history.json"):
        load_model(tmp_path / "m")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nothing")


def test_oracle_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="oracle"):
        save_model(PREDICTORS.create("oracle", workflows=TRAIN), tmp_path / "m")


def test_corrupt_fused_model_is_an_artifact_error(tmp_path):
    from pbkv.predictor.fused import FusedConfig, FusedPredictor

    model = FusedPredictor.fit(TRAIN, FusedConfig(cross_fit_max_workflows=0))
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{}")
    with pytest.raises(ArtifactError, match="unreadable fused model"):
        load_model(tmp_path / "m")


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_that_is_not_a_model_is_refused_and_kept(tmp_path):
    out = tmp_path / "results"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        ArtifactError,
        match="is not empty and holds no pbkv model; choose another directory or pass --force",
    ):
        save_model(PREDICTORS.create("markov1", workflows=TRAIN), out)
    assert _names(out) == ["notes.txt", "sub"] and _names(tmp_path) == ["results"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not a directory"):
        save_model(PREDICTORS.create("markov1", workflows=TRAIN), tmp_path / "file")


def test_force_keeps_the_foreign_folder_under_a_new_name(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), out, force=True)
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("results.replaced-")]
    assert (kept / "notes.txt").read_text() == "mine"
    assert load_model(out).name == "markov1"


def test_a_model_is_replaced_whole_and_nothing_is_left_behind(tmp_path):
    out = tmp_path / "m"
    out.mkdir()  # an empty folder is fine
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), out, {"version": "v1"})
    save_model(PREDICTORS.create("frequency", workflows=TRAIN), out, {"version": "v2"})
    assert load_model(out).name == "frequency"
    assert _names(tmp_path) == ["m"]  # no temporary or old folder remains
    assert _names(out) == ["history.json", "metadata.json"]


def test_a_model_with_other_files_in_it_is_not_replaced(tmp_path):
    out = tmp_path / "m"
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), out)
    (out / "README").write_text("mine")
    with pytest.raises(ArtifactError, match=r"holds a pbkv model and other files \(README\)"):
        save_model(PREDICTORS.create("frequency", workflows=TRAIN), out)
    assert load_model(out).name == "markov1"


def test_a_failed_write_leaves_the_old_model_intact(tmp_path, monkeypatch):
    from pbkv.predictor import artifact

    out = tmp_path / "m"
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(predictor, tmp, metadata):
        (tmp / "history.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(PREDICTORS.create("frequency", workflows=TRAIN), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _names(tmp_path) == ["m"]


def test_the_two_rename_fallback_replaces_a_model_too(tmp_path, monkeypatch):
    from pbkv.predictor import artifact

    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)  # no renameat2
    out = tmp_path / "m"
    save_model(PREDICTORS.create("markov1", workflows=TRAIN), out)
    save_model(PREDICTORS.create("frequency", workflows=TRAIN), out)
    assert load_model(out).name == "frequency" and _names(tmp_path) == ["m"]


def _corrupt_binary_metadata(m):
    (m / "metadata.json").write_bytes(b"\x80\x81\xfe\xff binary")


def _corrupt_list_metadata(m):
    (m / "metadata.json").write_text("[1, 2]")


def _corrupt_markov_order(m):
    meta = json.loads((m / "metadata.json").read_text())
    del meta["config"]["order"]
    (m / "metadata.json").write_text(json.dumps(meta))


def _corrupt_binary_history(m):
    (m / "history.json").write_bytes(b"\xff\x00\x01")


def _corrupt_empty_npz(m):
    (m / "weights.npz").write_bytes(b"")


def _corrupt_truncated_npz(m):
    data = (m / "weights.npz").read_bytes()
    (m / "weights.npz").write_bytes(data[: len(data) // 2])


# (corruption, model kind, the file named, what the message says is wrong)
CORRUPTIONS = [
    (_corrupt_binary_metadata, "markov1", "metadata.json", "not UTF-8 text"),
    (_corrupt_list_metadata, "markov1", "metadata.json", "must be a JSON object, got list"),
    (_corrupt_markov_order, "markov1", "metadata.json", "needs config.order"),
    (_corrupt_binary_history, "markov1", "history.json", "not UTF-8 text"),
    (_corrupt_empty_npz, "fused", "weights.npz", "empty or truncated"),
    (_corrupt_truncated_npz, "fused", "weights.npz", "empty or truncated"),
]


def saved_model(kind: str, path):
    if kind == "fused":
        from pbkv.predictor.fused import FusedConfig, FusedPredictor

        model = FusedPredictor.fit(TRAIN, FusedConfig(cross_fit_max_workflows=0))
    else:
        model = PREDICTORS.create(kind, workflows=TRAIN)
    return save_model(model, path)


@pytest.mark.parametrize(
    ("corrupt", "kind", "file", "what"), CORRUPTIONS, ids=[c[0].__name__[9:] for c in CORRUPTIONS]
)
def test_every_corruption_is_an_artifact_error_naming_the_file(tmp_path, corrupt, kind, file, what):
    model = saved_model(kind, tmp_path / "m")
    corrupt(model)
    with pytest.raises(ArtifactError) as info:
        load_model(model)
    assert str(model / file) in str(info.value) and what in str(info.value)
