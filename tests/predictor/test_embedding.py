"""The optional sentence-embedding expert (real all-MiniLM-L6-v2 from the installed package)."""

from __future__ import annotations

import pytest

from pbkv.predictor.artifact import load_model, save_model
from pbkv.predictor.examples import state_at
from pbkv.predictor.fused import FusedConfig, FusedPredictor
from pbkv.training.synth import synthesize


@pytest.mark.slow
def test_embedding_expert_trains_predicts_and_round_trips(tmp_path):
    config = FusedConfig(seed=0, experts=("markov", "embedding"), cross_fit_max_workflows=0)
    train = synthesize("dynamic", seed=8, num_workflows=60)
    model = FusedPredictor.fit(train, config)
    state = state_at(synthesize("dynamic", seed=9, num_workflows=1)[0], 2)
    p = model.next_distribution(state)
    assert sum(p.values()) == pytest.approx(1.0)
    save_model(model, tmp_path / "m")
    assert load_model(tmp_path / "m").forecast(state) == model.forecast(state)
