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
